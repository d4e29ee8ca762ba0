"""Under real PM2: the memory thresholds act in a coherent order, cleanup < refuse < PM2's restart.

All three read the RSS of the same processes; PM2's hard restart kills an in-flight generation, so it
must be the backstop, never the first to act. Also: under PM2, information lands in *-out.log and
*-error.log keeps only warnings and errors.
"""

from __future__ import annotations

import re
import subprocess
import time

import httpx
import pytest
from pm2_helpers import FRONT_APP, SMALL_SPLATS, WORKER_APP, pm2_daemon, wait_until

from generation.settings import GB
from generation.testing import REPO, SPLATGEN

PM2_UNITS = {"K": 1024, "M": 1024**2, "G": 1024**3}


def pm2_limit_bytes(value: object) -> int:
    """PM2 keeps max_memory_restart as bytes in jlist; the config file may also say '16G'."""
    text = str(value)
    if text[-1:].upper() in PM2_UNITS:
        return int(float(text[:-1]) * PM2_UNITS[text[-1].upper()])
    return int(float(text))


@pytest.mark.pm2
def test_default_thresholds_act_before_pm2_and_logs_split() -> None:
    with pm2_daemon({"SPLATGEN_PROCEDURAL_GAUSSIANS": SMALL_SPLATS}) as daemon:
        daemon.start()
        thresholds = httpx.get(f"{daemon.front_url}/status", timeout=10).json()["thresholds"]
        cleanup, refuse = thresholds["memory_cleanup_gb"] * GB, thresholds["memory_refuse_gb"] * GB
        assert cleanup < refuse
        for name in (WORKER_APP, FRONT_APP):
            pm2_env = daemon.app(name).raw["pm2_env"]
            assert pm2_limit_bytes(pm2_env["max_memory_restart"]) > refuse, (
                name,
                pm2_env["max_memory_restart"],
            )

        r = httpx.post(f"{daemon.front_url}/generate/", data={"prompt": "a small stool"}, timeout=60)
        assert r.status_code == 200
        out_log = daemon.home / "logs" / f"{FRONT_APP}-out.log"
        error_log = daemon.home / "logs" / f"{FRONT_APP}-error.log"
        wait_until(lambda: "splatgen.access: POST /generate/ status=200" in out_log.read_text(), 10,
                   "the access line in the out log")  # fmt: skip
        assert "INFO" not in error_log.read_text()


@pytest.mark.pm2
def test_a_leaking_worker_is_cleaned_then_recycled_and_pm2_never_has_to_kill_it() -> None:
    env = {
        "SPLATGEN_PROCEDURAL_GAUSSIANS": SMALL_SPLATS,
        "SPLATGEN_PROCEDURAL_LEAK_MB": "150",
        "SPLATGEN_MEMORY_CLEANUP_GB": "0.5",
        "SPLATGEN_MEMORY_REFUSE_GB": "0.6",
        # PM2's limit is derived (0.6 GB + 2G); it looks every 0.5 s so it would act if it came first.
        "PM2_WORKER_INTERVAL": "500",
    }
    with pm2_daemon(env) as daemon:
        daemon.start()
        worker = daemon.app(WORKER_APP)
        assert pm2_limit_bytes(worker.raw["pm2_env"]["max_memory_restart"]) > 0.6 * GB
        codes = []
        for _ in range(12):
            r = httpx.post(f"{daemon.front_url}/generate/", data={"prompt": "a leaking jar"}, timeout=60)
            codes.append("ok" if r.status_code == 200 else r.json()["error"])
            if codes[-1] == "memory_pressure":
                break
        assert codes[0] == "ok" and codes[-1] == "memory_pressure", codes
        metrics = httpx.get(f"{daemon.front_url}/metrics", timeout=10).text
        cleaned = re.search(r'splatgen_memory_checks_total\{action="cleaned"\} (\d+)', metrics)
        assert cleaned and int(cleaned.group(1)) >= 1, metrics
        assert re.search(r'splatgen_memory_checks_total\{action="refused"\} 1\.0', metrics)

        restarted = daemon.wait_online_again(WORKER_APP, worker.pid)
        assert restarted.restarts == worker.restarts + 1
        time.sleep(1.5)  # three of PM2's memory looks: it must still have found nothing to restart
        assert daemon.app(WORKER_APP).restarts == restarted.restarts
        pm2_log = (daemon.home / "pm2.log").read_text()
        assert "exceeds --max-memory-restart" not in pm2_log
        worker_out = (daemon.home / "logs" / f"{WORKER_APP}-error.log").read_text()
        assert "recycling on request" in worker_out


def test_a_cleanup_threshold_above_the_refuse_threshold_is_refused_at_start() -> None:
    env = {"SPLATGEN_MEMORY_CLEANUP_GB": "15", "SPLATGEN_MEMORY_REFUSE_GB": "14", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([*SPLATGEN, "front", "--port", "0"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 2
    assert (
        "SPLATGEN_MEMORY_CLEANUP_GB=15 is above SPLATGEN_MEMORY_REFUSE_GB=14: cleanup must act first"
        in done.stderr
    )
