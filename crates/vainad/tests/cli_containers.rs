//! End to end: the container verbs of the `vaina` CLI (crictl's) against `vainad` started
//! inside a throwaway node namespace with a temp root: image import, runp, create, start, ps,
//! inspect, exec -s, logs, stop, rm, run and rmp, and nothing left afterwards.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use vaina_image::testimage::busybox_oci_layout;
use vaina_testkit::can_run_ns_tests;

fn write_json(path: PathBuf, v: serde_json::Value) -> PathBuf {
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    path
}

fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `ps` table rows split into columns (columns are separated by three or more spaces; some
/// cells, like "3 seconds ago", have single ones).
fn table(out: &str) -> Vec<Vec<String>> {
    out.lines()
        .map(|l| {
            l.split("   ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(String::from)
                .collect()
        })
        .collect()
}

#[test]
fn cli_runs_a_container_through_its_whole_life_and_leaves_nothing() {
    if !can_run_ns_tests() {
        return;
    }
    let d = Daemon::start();
    let layout = busybox_oci_layout(&d.node.path("busybox-oci"), "busybox").unwrap();
    let out = d.vaina_ok(&["image", "import", "--root", arg(&d.root), arg(&layout)]);
    assert!(out.starts_with(&format!("Imported {BUSYBOX}")), "{out}");

    let logs = d.root.join("logs/cli-pod");
    let pod_json = write_json(
        d.node.path("pod.json"),
        serde_json::json!({
            "metadata": {"name": "cli-pod", "namespace": "default", "uid": "uid-cli-pod"},
            "hostname": "cli-pod",
            "log_directory": logs,
            "linux": {}
        }),
    );
    let ctr_json = write_json(
        d.node.path("ctr.json"),
        serde_json::json!({
            "metadata": {"name": "hola"},
            "image": {"image": "busybox"},
            "command": ["sh", "-c", "echo hola; sleep 3600"],
            "labels": {"app": "cli"},
            "log_path": "hola.log",
            "linux": {}
        }),
    );

    let pod = d.vaina_ok(&["runp", arg(&pod_json)]).trim().to_string();

    // A malformed config is refused before anything is made, naming the field.
    let bad = write_json(
        d.node.path("bad.json"),
        serde_json::json!({"metadata": {"name": "bad"}, "imagen": {"image": "busybox"}}),
    );
    let out = d.vaina(&["create", &pod, arg(&bad), arg(&pod_json)]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("imagen") && err.contains("bad.json"), "{err}");

    let id = d
        .vaina_ok(&["create", &pod, arg(&ctr_json), arg(&pod_json)])
        .trim()
        .to_string();
    assert_eq!(id.len(), 64, "container id: {id:?}");
    let out = d.vaina_ok(&["ps"]);
    assert_eq!(table(&out).len(), 1, "created is not running: {out}");
    let out = d.vaina_ok(&["ps", "-a"]);
    assert_eq!(table(&out)[1][3], "Created", "{out}");
    assert_eq!(d.vaina_ok(&["start", &id[..12]]).trim(), &id[..12]);

    // ps: crictl's table, only running containers by default; filters.
    let out = d.vaina_ok(&["ps"]);
    let rows = table(&out);
    assert_eq!(
        rows[0],
        [
            "CONTAINER",
            "IMAGE",
            "CREATED",
            "STATE",
            "NAME",
            "ATTEMPT",
            "POD ID"
        ],
        "{out}"
    );
    assert_eq!(rows.len(), 2, "{out}");
    assert_eq!(rows[1][0], id[..13]);
    assert_eq!(rows[1][1], "busybox");
    assert!(rows[1][2].ends_with("ago"), "{out}");
    assert_eq!(rows[1][3..], ["Running", "hola", "0", &pod[..13]], "{out}");
    assert_eq!(d.vaina_ok(&["ps", "-q"]).trim(), id);
    assert_eq!(d.vaina_ok(&["ps", "-q", "--pod", &pod[..8]]).trim(), id);
    assert_eq!(d.vaina_ok(&["ps", "-q", "--label", "app=cli"]).trim(), id);
    assert_eq!(d.vaina_ok(&["ps", "-q", "--label", "app=other"]).trim(), "");
    assert_eq!(d.vaina_ok(&["ps", "-q", "--name", "hol"]).trim(), id);
    assert_eq!(d.vaina_ok(&["ps", "-q", "--state", "exited"]).trim(), "");
    let json: serde_json::Value = serde_json::from_str(&d.vaina_ok(&["ps", "-o", "json"])).unwrap();
    assert_eq!(json["containers"][0]["id"], id.as_str());

    // inspect: ContainerStatus with the runtime's verbose info embedded as JSON.
    let json: serde_json::Value = serde_json::from_str(&d.vaina_ok(&["inspect", &id])).unwrap();
    assert_eq!(json["status"]["id"], id.as_str());
    assert_eq!(
        json["status"]["log_path"],
        logs.join("hola.log").display().to_string()
    );
    assert!(json["info"]["info"]["pid"].as_i64().unwrap() > 0, "{json}");

    // exec -s: the container sees the pod's IP (from inspectp) on eth0.
    let json: serde_json::Value = serde_json::from_str(&d.vaina_ok(&["inspectp", &pod])).unwrap();
    let ip = json["status"]["network"]["ip"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(ip.starts_with("10.88."), "{json}");
    let out = d.vaina_ok(&[
        "exec", "-s", &id, "--", "ip", "-4", "-o", "addr", "show", "eth0",
    ]);
    assert!(out.contains(&format!("inet {ip}/16")), "{out}");
    // The command's stderr and exit code become the CLI's.
    let out = d.vaina(&[
        "exec",
        "-s",
        &id,
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    // Without -s: streamed through the streaming server, which listens on the node's
    // loopback, so the CLI runs inside the node.
    let endpoint = d.endpoint();
    let out = d.node.run(|| {
        std::process::Command::new(bin_dir().join("vaina"))
            .args(["--endpoint", &endpoint, "exec", &id, "--"])
            .args(["sh", "-c", "echo streamed; echo err >&2; exit 4"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    });
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "streamed\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");

    // logs: the messages of the CRI log file.
    let out = eventually("hola logged", || {
        let out = d.vaina_ok(&["logs", &id]);
        (!out.is_empty()).then_some(out)
    });
    assert_eq!(out, "hola\n");
    let out = d.vaina_ok(&["logs", "--timestamps", &id]);
    let (ts, msg) = out.trim_end().split_once(' ').unwrap();
    assert!(ts.contains('T') && ts.ends_with('Z'), "{out}");
    assert_eq!(msg, "hola");
    assert_eq!(d.vaina_ok(&["logs", "--tail", "0", &id]), "");

    // rm refuses a running container without -f.
    let out = d.vaina(&["rm", &id]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is running"));

    // stop: sh as PID 1 ignores SIGTERM, so SIGKILL after the 1 s timeout.
    assert_eq!(d.vaina_ok(&["stop", "-t", "1", &id]).trim(), id);
    assert_eq!(d.vaina_ok(&["ps", "-q"]).trim(), "");
    let out = d.vaina_ok(&["ps", "-a"]);
    let rows = table(&out);
    assert_eq!(rows.len(), 2, "{out}");
    assert_eq!(rows[1][3], "Exited", "{out}");
    assert_eq!(d.vaina_ok(&["ps", "-q", "--state", "exited"]).trim(), id);
    assert_eq!(d.vaina_ok(&["logs", "-f", &id]), "hola\n", "follow ends");

    // run: a pod and a container in one go; rm -f stops it; stderr lines go to stderr.
    let pod2_json = write_json(
        d.node.path("pod2.json"),
        serde_json::json!({
            "metadata": {"name": "cli-run", "namespace": "default", "uid": "uid-cli-run"},
            "log_directory": d.root.join("logs/cli-run"),
        }),
    );
    let ctr2_json = write_json(
        d.node.path("ctr2.json"),
        serde_json::json!({
            "metadata": {"name": "both"},
            "image": {"image": "busybox"},
            "command": ["sh", "-c", "echo uno; echo dos >&2; sleep 3600"],
            "log_path": "both.log"
        }),
    );
    let id2 = d
        .vaina_ok(&["run", arg(&ctr2_json), arg(&pod2_json)])
        .trim()
        .to_string();
    assert_eq!(d.vaina_ok(&["ps", "-q"]).trim(), id2);
    let out = eventually("both logged", || {
        let out = d.vaina(&["logs", &id2]);
        (!out.stderr.is_empty()).then_some(out)
    });
    assert_eq!(String::from_utf8_lossy(&out.stdout), "uno\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "dos\n");
    // A run whose container cannot be created removes the pod it made.
    let missing = write_json(
        d.node.path("missing.json"),
        serde_json::json!({"metadata": {"name": "nope"}, "image": {"image": "nginx:1.27"}}),
    );
    let pod3_json = write_json(
        d.node.path("pod3.json"),
        serde_json::json!({"metadata": {"name": "cli-undo", "namespace": "default", "uid": "u3"}}),
    );
    let out = d.vaina(&["run", arg(&missing), arg(&pod3_json)]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nginx:1.27"), "{err}");
    assert_eq!(d.vaina_ok(&["pods", "-q", "--name", "cli-undo"]), "");
    assert_eq!(d.node.veths().len(), 2, "pod and pod2 only");
    let pod2 = d
        .vaina_ok(&["pods", "-q", "--name", "cli-run"])
        .trim()
        .to_string();
    assert_eq!(d.vaina_ok(&["rm", "-f", &id2]).trim(), id2);

    assert_eq!(d.vaina_ok(&["rm", &id]).trim(), id);
    assert_eq!(d.vaina_ok(&["ps", "-a", "-q"]).trim(), "");
    let out = d.vaina(&["logs", &id]);
    assert!(!out.status.success(), "logs of a removed container");
    assert!(String::from_utf8_lossy(&out.stderr).contains("NotFound"));
    d.vaina_ok(&["rmp", &pod, &pod2]);
    assert_eq!(d.vaina_ok(&["pods", "-q"]).trim(), "");

    // Nothing left: no veth on the node, no mount under the root, no supervisor.
    assert!(
        d.node.veths().is_empty(),
        "veths left: {:?}",
        d.node.veths()
    );
    assert_eq!(d.mounts(), Vec::<String>::new(), "mounts left");
    assert_eq!(d.reservations(), 0, "IP reservations left");
    eventually("supervisors gone", || {
        d.processes().is_empty().then_some(())
    });
}
