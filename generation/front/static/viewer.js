// The 3D view of one generation: Spark (vendored from npm) renders the PLY with three.js.
// The camera starts where 404's validators put theirs: +Y up, 15 degrees above, 49.1 degree field of view,
// at 2.5 / 1.5 times the model's largest extent.

import * as THREE from "three";
import { OrbitControls } from "three/addons/controls/OrbitControls.js";
import { SparkRenderer, SplatMesh } from "@sparkjsdev/spark";

const FOV_DEG = 49.1;
const ELEVATION_DEG = 15;
const DISTANCE_PER_EXTENT = 2.5 / 1.5;

export class SplatViewer {
  constructor(stage) {
    this.stage = stage;
    // preserveDrawingBuffer keeps the last frame readable (screenshots, tests); a small cost for one view.
    this.renderer = new THREE.WebGLRenderer({ antialias: false, preserveDrawingBuffer: true });
    this.renderer.setPixelRatio(Math.min(window.devicePixelRatio || 1, 2));
    this.renderer.setClearColor(0xffffff, 1);
    stage.append(this.renderer.domElement);
    this.scene = new THREE.Scene();
    // Frames are drawn on demand (camera moved, sort finished), not in a loop: an idle view costs nothing.
    this.scene.add(new SparkRenderer({ renderer: this.renderer, onDirty: () => this.requestRender() }));
    this.camera = new THREE.PerspectiveCamera(FOV_DEG, 1, 0.01, 1000);
    this.controls = new OrbitControls(this.camera, this.renderer.domElement);
    this.controls.enableDamping = true;
    this.controls.addEventListener("change", () => this.requestRender());
    this.mesh = null;
    this.active = false;
    this.framePending = false;
    this.resizer = new ResizeObserver(() => this.resize());
    this.resizer.observe(stage);
    this.resize();
  }

  resize() {
    const width = Math.max(this.stage.clientWidth, 1);
    const height = Math.max(this.stage.clientHeight, 1);
    this.renderer.setSize(width, height, false);
    this.camera.aspect = width / height;
    this.camera.updateProjectionMatrix();
    this.requestRender();
  }

  requestRender() {
    if (!this.active || this.framePending) return;
    this.framePending = true;
    requestAnimationFrame(() => {
      this.framePending = false;
      if (!this.active) return;
      // update() is true while damping still moves the camera: keep drawing until it rests.
      const moving = this.controls.update();
      this.renderer.render(this.scene, this.camera);
      if (moving) this.requestRender();
    });
  }

  // Load a PLY and frame it; resolves with the number of splats once it can be drawn.
  async show(url) {
    this.clear();
    const mesh = new SplatMesh({ url });
    this.mesh = mesh;
    this.scene.add(mesh);
    this.active = true;
    await mesh.initialized;
    if (this.mesh !== mesh) return 0;
    this.frameModel(mesh.getBoundingBox(true));
    this.requestRender();
    return (mesh.packedSplats ?? mesh.extSplats ?? mesh.splats)?.numSplats ?? 0;
  }

  frameModel(box) {
    const centre = box.getCenter(new THREE.Vector3());
    const size = box.getSize(new THREE.Vector3());
    const extent = Math.max(size.x, size.y, size.z) || 1;
    const distance = extent * DISTANCE_PER_EXTENT;
    const elevation = THREE.MathUtils.degToRad(ELEVATION_DEG);
    this.camera.position.set(
      centre.x,
      centre.y + distance * Math.sin(elevation),
      centre.z + distance * Math.cos(elevation),
    );
    this.camera.near = distance / 100;
    this.camera.far = distance * 100;
    this.camera.updateProjectionMatrix();
    this.controls.target.copy(centre);
    this.controls.update();
  }

  clear() {
    if (this.mesh) {
      this.scene.remove(this.mesh);
      this.mesh.dispose();
      this.mesh = null;
    }
  }

  stop() {
    this.active = false;
    this.clear();
  }
}
