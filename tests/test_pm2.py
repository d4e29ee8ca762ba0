"""splatgen under real PM2: the ecosystem file, the start/stop scripts, and the fault scenarios.

Each test runs its own PM2 daemon (PM2_HOME in a temp dir) on free ports and checks that ``pm2 kill``
leaves no process behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from pm2_helpers import (
    ECOSYSTEM,
    FRONT_APP,
    SMALL_SPLATS,
    START_SCRIPT,
    STOP_SCRIPT,
    WORKER_APP,
    Pm2Daemon,
    pm2_daemon,
    wait_until,
)

from diagnostics import Splat
from generation.settings import GB

# The typed refusals the front end may answer while a worker restarts; anything else is a bug.
TYPED_503 = {"memory_pressure", "overloaded", "timeout", "worker_unavailable"}


def ecosystem_copy(root: Path) -> Path:
    """ecosystem.config.js in a folder of its own with the console script it looks for next to .venv's python.

    The file refuses to load without ``<its folder>/.venv/bin/splatgen``; a copy beside a placeholder makes
    these tests independent of whether (and where) this checkout's environment was installed.
    """
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "splatgen").write_text("#!/bin/sh\nexit 0\n")
    copy = root / ECOSYSTEM.name
    shutil.copyfile(ECOSYSTEM, copy)
    return copy


def run_ecosystem(root: Path, script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Evaluate ``script`` with node, ``ECOSYSTEM`` bound to a copy in ``root``, under ``env`` alone."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SPLATGEN_")}
    path = json.dumps(str(ecosystem_copy(root)))
    return subprocess.run(
        ["node", "-e", f"const ECOSYSTEM = {path};\n{script}"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def ecosystem_apps(root: Path, **env: str) -> list[dict]:
    """The apps ecosystem.config.js defines under ``env`` (nothing else from SPLATGEN_*)."""
    done = run_ecosystem(root, "process.stdout.write(JSON.stringify(require(ECOSYSTEM).apps))", env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def generate(daemon: Pm2Daemon, prompt: str, timeout: float = 60) -> httpx.Response:
    """The 404 miner's call."""
    return httpx.post(f"{daemon.front_url}/generate/", data={"prompt": prompt}, timeout=timeout)


def assert_served_or_typed(response: httpx.Response, gaussians: int) -> str:
    """A response is either a complete, readable PLY or a typed 503 with Retry-After; returns its code."""
    if response.status_code == 200:
        splat = Splat.from_ply_bytes(response.content)
        assert len(splat) == gaussians == int(response.headers["x-gaussian-count"])
        return "ok"
    assert response.status_code == 503, f"unexpected {response.status_code}: {response.text[:300]}"
    body = response.json()
    assert body["error"] in TYPED_503, body
    assert body["message"]
    assert int(response.headers["retry-after"]) > 0
    return str(body["error"])


# ------------------------------------------------------------------------------------------ the config file


def test_default_layout_is_one_worker_and_the_front_end(tmp_path: Path) -> None:
    apps = {app["name"]: app for app in ecosystem_apps(tmp_path)}
    assert set(apps) == {WORKER_APP, FRONT_APP}
    worker, front = apps[WORKER_APP], apps[FRONT_APP]
    assert worker["env"]["SPLATGEN_PORT"] == "8095"
    assert front["env"]["SPLATGEN_PORT"] == "8093"
    assert front["env"]["SPLATGEN_WORKERS"] == "http://127.0.0.1:8095"
    for app in (worker, front):
        assert app["max_memory_restart"] == "16G"  # the refuse threshold (14 GB) + 2G
        assert app["interpreter"] == str(tmp_path / ".venv" / "bin" / "python")
        assert app["cwd"] == str(tmp_path)
        assert app["kill_timeout"] >= 35_000  # longer than the slowest generation the plan allows
        assert app["exp_backoff_restart_delay"] > 0
        assert app["max_restarts"] > 0 and app["min_uptime"] > 0
        assert app["log_date_format"]
        assert "CUDA_VISIBLE_DEVICES" not in app["env"]


def test_one_worker_per_gpu_with_consecutive_ports_and_an_optional_miner(tmp_path: Path) -> None:
    apps = ecosystem_apps(
        tmp_path,
        SPLATGEN_GPUS="0,1",
        SPLATGEN_WORKER_PORT="9100",
        SPLATGEN_PM2_MAX_MEMORY="800M",
        SPLATGEN_MINER_CMD="python neurons/miner.py --netuid 17",
        SPLATGEN_PROCEDURAL_GAUSSIANS="1234",
    )
    by_name = {app["name"]: app for app in apps}
    assert set(by_name) == {
        "trellis-microservice-0",
        "trellis-microservice-1",
        FRONT_APP,
        "miner-sn17-mainnet",
    }
    assert by_name["trellis-microservice-0"]["env"]["CUDA_VISIBLE_DEVICES"] == "0"
    assert by_name["trellis-microservice-1"]["env"]["CUDA_VISIBLE_DEVICES"] == "1"
    assert by_name["trellis-microservice-1"]["env"]["SPLATGEN_PORT"] == "9101"
    assert by_name[FRONT_APP]["env"]["SPLATGEN_WORKERS"] == "http://127.0.0.1:9100,http://127.0.0.1:9101"
    assert by_name["trellis-microservice-0"]["max_memory_restart"] == "800M"
    # Other SPLATGEN_* settings reach the services.
    assert by_name["trellis-microservice-1"]["env"]["SPLATGEN_PROCEDURAL_GAUSSIANS"] == "1234"
    assert by_name["miner-sn17-mainnet"]["args"] == ["-c", "python neurons/miner.py --netuid 17"]


def test_a_bad_setting_stops_the_config_with_a_clear_message(tmp_path: Path) -> None:
    done = run_ecosystem(tmp_path, "require(ECOSYSTEM)", {"SPLATGEN_FRONT_PORT": "eighty"})
    assert done.returncode != 0
    assert 'SPLATGEN_FRONT_PORT="eighty" must be a whole number' in done.stderr


# ------------------------------------------------------------------------------------------ start and stop


@pytest.mark.pm2
def test_start_is_idempotent_serves_every_worker_and_stop_removes_the_apps() -> None:
    # SPLATGEN_GPUS on a CPU host still gives one procedural worker per entry: the multi-GPU wiring, for real.
    with pm2_daemon({"SPLATGEN_GPUS": "0,1", "SPLATGEN_PROCEDURAL_GAUSSIANS": SMALL_SPLATS}) as daemon:
        daemon.start()
        first = daemon.apps()
        assert set(first) == {"trellis-microservice-0", "trellis-microservice-1", FRONT_APP}
        assert all(app.status == "online" for app in first.values())
        assert first["trellis-microservice-1"].env["CUDA_VISIBLE_DEVICES"] == "1"

        done = daemon.script(START_SCRIPT, "--timeout", "90")
        assert done.returncode == 0, done.stderr
        assert f"http://127.0.0.1:{daemon.front_port}" in done.stdout
        assert "logs" in done.stdout and "stop_service.sh" in done.stdout
        second = daemon.apps()
        assert set(second) == set(first), "re-running start_service.sh must not add apps"
        for name, app in second.items():
            assert app.restarts == first[name].restarts + 1 and app.pid != first[name].pid

        def healthy_workers() -> set[str]:
            workers = httpx.get(f"{daemon.front_url}/status", timeout=10).json()["workers"]
            return {w["url"] for w in workers if w["healthy"]}

        expected = {f"http://127.0.0.1:{daemon.worker_port}", f"http://127.0.0.1:{daemon.worker_port + 1}"}
        wait_until(lambda: healthy_workers() == expected, 30, "the front end to see both workers healthy")
        assert generate(daemon, "a small wooden box").status_code == 200

        stopped = daemon.script(STOP_SCRIPT)
        assert stopped.returncode == 0, stopped.stderr
        assert daemon.apps() == {}


@pytest.mark.pm2
def test_start_reports_a_service_that_never_gets_healthy() -> None:
    # An invalid front-end setting: the app exits at once, PM2 keeps restarting it, /health never answers.
    with pm2_daemon({"SPLATGEN_MEMORY_REFUSE_GB": "-1"}) as daemon:
        done = daemon.script(START_SCRIPT, "--timeout", "4")
        daemon.apps()
        assert done.returncode == 1
        assert "did not become healthy within 4s" in done.stderr
        assert "logs" in done.stderr and str(daemon.home) in done.stderr
        assert "Traceback" not in done.stdout + done.stderr


# ------------------------------------------------------------------------------------------ fault scenarios


@pytest.mark.pm2
def test_pm2_restarts_a_leaking_worker_and_service_continues() -> None:
    env = {
        "SPLATGEN_PROCEDURAL_GAUSSIANS": SMALL_SPLATS,
        "SPLATGEN_PROCEDURAL_LEAK_MB": "100",
        "SPLATGEN_PM2_MAX_MEMORY": "400M",
        # PM2 checks memory every 30 s by default; the daemon reads this at start.
        "PM2_WORKER_INTERVAL": "500",
    }
    with pm2_daemon(env) as daemon:
        daemon.start()
        worker = daemon.app(WORKER_APP)
        outcomes = []
        deadline = time.monotonic() + 90
        while daemon.app(WORKER_APP).restarts == worker.restarts:
            assert time.monotonic() < deadline, f"PM2 never restarted the leaking worker: {outcomes}"
            outcomes.append(assert_served_or_typed(generate(daemon, "a leaking teapot"), int(SMALL_SPLATS)))
        assert "ok" in outcomes
        daemon.wait_online_again(WORKER_APP, worker.pid)
        pm2_log = (daemon.home / "pm2.log").read_text()
        assert "exceeds --max-memory-restart" in pm2_log
        daemon.wait_front_healthy()
        # The fresh process starts small again and serves.
        response = generate(daemon, "a teapot after the restart")
        assert assert_served_or_typed(response, int(SMALL_SPLATS)) == "ok"
        rss = httpx.get(f"{daemon.worker_url}/memory", timeout=5).json()["rss_bytes"]
        assert rss < 400 * 1024**2


@pytest.mark.pm2
def test_front_refuses_under_memory_pressure_then_serves_after_the_restart() -> None:
    env = {
        "SPLATGEN_PROCEDURAL_GAUSSIANS": SMALL_SPLATS,
        "SPLATGEN_PROCEDURAL_LEAK_MB": "300",
        "SPLATGEN_MEMORY_CLEANUP_GB": "0.6",
        "SPLATGEN_MEMORY_REFUSE_GB": "0.7",
    }
    with pm2_daemon(env) as daemon:
        daemon.start()
        worker = daemon.app(WORKER_APP)
        outcomes = []
        refusal = None
        for _ in range(8):
            response = generate(daemon, "a leaking vase")
            outcomes.append(assert_served_or_typed(response, int(SMALL_SPLATS)))
            if outcomes[-1] == "memory_pressure":
                refusal = response.json()
                break
        assert outcomes[0] == "ok"
        assert refusal is not None, f"the front end never refused: {outcomes}"
        assert refusal["memory"]["worker_rss_bytes"] >= 0.7 * GB

        # The refusal asked the worker to recycle; PM2 brings it back and the front end serves again.
        restarted = daemon.wait_online_again(WORKER_APP, worker.pid)
        assert restarted.restarts == worker.restarts + 1
        daemon.wait_front_healthy()
        after = wait_until(
            lambda: (
                assert_served_or_typed(generate(daemon, "a vase after the restart"), int(SMALL_SPLATS))
                == "ok"
            ),
            60,
            "a successful generation after the restart",
            interval_s=0.5,
        )
        assert after


@pytest.mark.pm2
def test_worker_killed_mid_generation_gives_a_typed_503_then_pm2_restarts_it() -> None:
    env = {"SPLATGEN_PROCEDURAL_GAUSSIANS": SMALL_SPLATS, "SPLATGEN_PROCEDURAL_DELAY_S": "3"}
    with pm2_daemon(env) as daemon:
        daemon.start()
        worker = daemon.app(WORKER_APP)
        result: dict[str, httpx.Response] = {}
        request = threading.Thread(target=lambda: result.setdefault("r", generate(daemon, "a slow lantern")))
        request.start()
        wait_until(
            lambda: httpx.get(f"{daemon.worker_url}/memory", timeout=5).json()["busy"],
            30,
            "the worker to be busy",
        )
        os.kill(worker.pid, signal.SIGKILL)
        request.join(60)
        response = result["r"]
        assert response.status_code == 503
        assert response.json()["error"] == "worker_unavailable"
        assert int(response.headers["retry-after"]) > 0

        restarted = daemon.wait_online_again(WORKER_APP, worker.pid)
        assert restarted.restarts == worker.restarts + 1
        daemon.wait_front_healthy()
        after = generate(daemon, "a slow lantern, again")
        assert assert_served_or_typed(after, int(SMALL_SPLATS)) == "ok"
