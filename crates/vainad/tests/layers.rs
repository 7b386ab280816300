//! End to end: an image with more layers than one page of mount options can name (each
//! snapshot path is ~100 bytes here, so ~40 fit) still runs: vaina mounts its overlay
//! layer by layer, in the right order.

mod common;

use common::*;
use vaina_image::testimage::{LayerBuilder, TestImage, busybox_layer};
use vaina_testkit::can_run_ns_tests;

const LAYERS: usize = 70;

#[test]
fn an_image_with_seventy_layers_runs_with_the_top_layer_winning() {
    if !can_run_ns_tests() {
        return;
    }
    let d = Daemon::start();
    let mut layers = vec![busybox_layer().unwrap()];
    for i in 1..=LAYERS {
        let mut l = LayerBuilder::new();
        l.dir("layers", 0o755).unwrap();
        l.file(&format!("layers/{i}"), 0o644, format!("{i}\n").as_bytes())
            .unwrap();
        // Every layer writes the same file: the topmost must win.
        l.file("same", 0o644, format!("{i}\n").as_bytes()).unwrap();
        layers.push(l.finish().unwrap());
    }
    let layout = TestImage::from_layers(layers)
        .write_oci_layout(&d.node.path("tall"), "tall:1")
        .unwrap();
    let store = vaina_image::ImageStore::open(d.store_dir()).unwrap();
    store.import(&layout).unwrap();
    let image = store.get("tall:1").unwrap().unwrap();
    let options: usize = store
        .lowerdirs(&image)
        .unwrap()
        .iter()
        .map(|p| p.as_os_str().len() + 1)
        .sum();
    assert!(
        options > 4096,
        "the layers must not fit in one page ({options} bytes)"
    );

    let mut c = d.client();
    let pod_cfg = pod_config("tall-pod");
    let pod = c.run_pod(pod_cfg.clone()).unwrap();
    let mut cfg = container_config("tall", &["sleep", "3600"]);
    cfg.image.as_mut().unwrap().image = "tall:1".into();
    let ctr = c.run_container(&pod, &pod_cfg, cfg).unwrap();
    let (out, err, code) = c.exec(
        &ctr,
        &["sh", "-c", "ls /layers | wc -l; cat /same /layers/1"],
    );
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(lines, [LAYERS.to_string().as_str(), "70", "1"], "{out}");
    c.remove_pod(&pod).unwrap();
    assert!(d.mounts().is_empty(), "{:?}", d.mounts());
}
