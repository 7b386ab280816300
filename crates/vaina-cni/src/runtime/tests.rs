//! The runtime against fake plugins: shell scripts in a temp dir that log
//! each call's command, stdin and `CNI_*` environment, and print a result
//! naming themselves. Touches nothing outside the temp dir.

use std::fs;

use serde_json::json;
use tempfile::TempDir;

use super::*;
use crate::invoke::tests::script;

struct Fixture {
    dir: TempDir,
    cni: CniConfig,
}

impl Fixture {
    /// A bin dir holding one fake plugin per name.
    fn new(plugins: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        let log = dir.path().join("log");
        fs::create_dir_all(&bin).unwrap();
        fs::create_dir_all(&log).unwrap();
        for (i, name) in plugins.iter().enumerate() {
            let body = format!(
                r#"D={log}
stdin=$(cat)
n=$(cat "$D/calls" 2>/dev/null | wc -l)
n=$((n))
printf '%s' "$stdin" > "$D/$n.stdin"
env | grep '^CNI_' | sort > "$D/$n.env"
echo "$CNI_COMMAND {name} $CNI_CONTAINERID" >> "$D/calls"
if [ -e "$D/fail-{name}" ]; then
  echo "{{\"code\":$(cat "$D/fail-{name}"),\"msg\":\"{name} failed\"}}"
  exit 1
fi
case "$CNI_COMMAND" in
ADD) echo '{{"cniVersion":"1.0.0","interfaces":[{{"name":"{name}"}}],"ips":[{{"address":"10.0.0.{ip}/24","interface":0}}]}}' ;;
VERSION) echo '{{"cniVersion":"1.1.0","supportedVersions":["1.0.0","1.1.0"]}}' ;;
esac
exit 0"#,
                log = log.display(),
                ip = i + 1,
            );
            script(&bin, name, &body);
        }
        let cni = CniConfig::new(
            vec![dir.path().join("missing-dir"), bin],
            dir.path().join("cache"),
        );
        Self { dir, cni }
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    /// "COMMAND plugin containerID" per call, in order.
    fn calls(&self) -> Vec<String> {
        fs::read_to_string(self.log().join("calls"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn stdin(&self, call: usize) -> Value {
        serde_json::from_slice(&fs::read(self.log().join(format!("{call}.stdin"))).unwrap())
            .unwrap()
    }

    fn env(&self, call: usize) -> Vec<String> {
        fs::read_to_string(self.log().join(format!("{call}.env")))
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn fail(&self, plugin: &str, code: u32) {
        fs::write(self.log().join(format!("fail-{plugin}")), code.to_string()).unwrap();
    }

    fn heal(&self, plugin: &str) {
        fs::remove_file(self.log().join(format!("fail-{plugin}"))).unwrap();
    }

    fn cache_file(&self, container_id: &str) -> PathBuf {
        self.cni
            .cache_dir
            .join(format!("results/net-{container_id}-eth0"))
    }
}

fn list(version: &str, extra: Value) -> NetworkConfigList {
    let mut v = json!({
        "cniVersion": version,
        "name": "net",
        "plugins": [
            {"type": "a", "bridge": "br0"},
            {"type": "b", "capabilities": {"portMappings": true, "bandwidth": false}},
            {"type": "c", "capabilities": {"mac": true}}
        ]
    });
    for (k, val) in extra.as_object().unwrap() {
        v[k] = val.clone();
    }
    NetworkConfigList::from_bytes(v.to_string().as_bytes()).unwrap()
}

fn rt(container_id: &str) -> RuntimeConf {
    RuntimeConf {
        container_id: container_id.into(),
        netns: "/var/run/netns/test".into(),
        ifname: "eth0".into(),
        args: vec![("K8S_POD_NAME".into(), "web".into())],
        capability_args: json!({
            "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
            "bandwidth": {"ingressRate": 1000},
            "mac": "c2:11:22:33:44:55"
        })
        .as_object()
        .unwrap()
        .clone(),
    }
}

fn plugin_result(name: &str, ip: u8, version: &str) -> Value {
    json!({
        "cniVersion": version,
        "interfaces": [{"name": name}],
        "ips": [{"address": format!("10.0.0.{ip}/24"), "interface": 0}]
    })
}

#[test]
fn add_chains_prev_result_and_filters_runtime_config() {
    let f = Fixture::new(&["a", "b", "c"]);
    let l = list("1.0.0", json!({}));
    let result = f.cni.add_network_list(&l, &rt("ctr1")).unwrap();

    assert_eq!(f.calls(), ["ADD a ctr1", "ADD b ctr1", "ADD c ctr1"]);
    let first = f.stdin(0);
    assert_eq!(
        first,
        json!({"type": "a", "bridge": "br0", "name": "net", "cniVersion": "1.0.0"})
    );
    let second = f.stdin(1);
    assert_eq!(second["prevResult"], plugin_result("a", 1, "1.0.0"));
    assert_eq!(
        second["runtimeConfig"],
        json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]})
    );
    let third = f.stdin(2);
    assert_eq!(third["prevResult"], plugin_result("b", 2, "1.0.0"));
    assert_eq!(third["runtimeConfig"], json!({"mac": "c2:11:22:33:44:55"}));

    let bin = f.dir.path().join("bin");
    assert_eq!(
        f.env(0),
        [
            "CNI_ARGS=K8S_POD_NAME=web".to_owned(),
            "CNI_COMMAND=ADD".to_owned(),
            "CNI_CONTAINERID=ctr1".to_owned(),
            "CNI_IFNAME=eth0".to_owned(),
            "CNI_NETNS=/var/run/netns/test".to_owned(),
            format!(
                "CNI_PATH={}:{}",
                f.dir.path().join("missing-dir").display(),
                bin.display()
            ),
        ]
    );

    assert_eq!(result.interfaces[0].name, "c");
    assert_eq!(result.ips[0].address.to_string(), "10.0.0.3/24");
}

#[test]
fn add_writes_libcni_cache() {
    let f = Fixture::new(&["a", "b", "c"]);
    let l = list("1.0.0", json!({}));
    f.cni.add_network_list(&l, &rt("ctr1")).unwrap();

    let cached: Value = serde_json::from_slice(&fs::read(f.cache_file("ctr1")).unwrap()).unwrap();
    assert_eq!(cached["kind"], "cniCacheV1");
    assert_eq!(cached["containerId"], "ctr1");
    assert_eq!(cached["ifName"], "eth0");
    assert_eq!(cached["networkName"], "net");
    assert_eq!(cached["netns"], "/var/run/netns/test");
    assert_eq!(cached["cniArgs"], json!([["K8S_POD_NAME", "web"]]));
    assert_eq!(cached["capabilityArgs"]["mac"], "c2:11:22:33:44:55");
    assert_eq!(cached["result"], plugin_result("c", 3, "1.0.0"));
    let config = cached["config"].as_str().unwrap();
    assert_eq!(cache::base64_bytes::decode(config).unwrap(), l.bytes);

    let got = f
        .cni
        .get_cached_result("net", &rt("ctr1"))
        .unwrap()
        .unwrap();
    assert_eq!(got.interfaces[0].name, "c");
    let attachments = f.cni.list_cached_attachments("net").unwrap();
    assert_eq!(attachments.len(), 1);
    assert_eq!(attachments[0].runtime_conf(), rt("ctr1"));
    assert_eq!(attachments[0].config, l.bytes);
}

#[test]
fn prev_result_is_converted_to_list_version() {
    let f = Fixture::new(&["a", "b", "c"]);
    let l = list("0.4.0", json!({}));
    let result = f.cni.add_network_list(&l, &rt("ctr1")).unwrap();
    let prev = &f.stdin(1)["prevResult"];
    assert_eq!(prev["cniVersion"], "0.4.0");
    assert_eq!(prev["ips"][0]["version"], "4");
    // The cache holds the list's version too, as a 0.4.0 runtime expects.
    let cached: Value = serde_json::from_slice(&fs::read(f.cache_file("ctr1")).unwrap()).unwrap();
    assert_eq!(cached["result"]["cniVersion"], "0.4.0");
    assert_eq!(result.cni_version, "1.0.0");
}

#[test]
fn del_runs_in_reverse_with_cached_result_and_removes_cache() {
    let f = Fixture::new(&["a", "b", "c"]);
    let l = list("1.0.0", json!({}));
    f.cni.add_network_list(&l, &rt("ctr1")).unwrap();
    f.cni.del_network_list(&l, &rt("ctr1")).unwrap();

    assert_eq!(f.calls()[3..], ["DEL c ctr1", "DEL b ctr1", "DEL a ctr1"]);
    for call in 3..6 {
        assert_eq!(
            f.stdin(call)["prevResult"],
            plugin_result("c", 3, "1.0.0"),
            "call {call}"
        );
        assert!(f.env(call).contains(&"CNI_COMMAND=DEL".to_owned()));
    }
    assert_eq!(
        f.stdin(3)["runtimeConfig"],
        json!({"mac": "c2:11:22:33:44:55"})
    );
    assert!(!f.cache_file("ctr1").exists());
    assert_eq!(f.cni.get_cached_result("net", &rt("ctr1")).unwrap(), None);
}

#[test]
fn del_without_cache_or_netns_succeeds() {
    let f = Fixture::new(&["a", "b", "c"]);
    let l = list("1.0.0", json!({}));
    let gone = RuntimeConf {
        netns: PathBuf::new(),
        ..rt("ctr1")
    };
    f.cni.del_network_list(&l, &gone).unwrap();
    assert_eq!(f.calls(), ["DEL c ctr1", "DEL b ctr1", "DEL a ctr1"]);
    assert!(f.stdin(0).get("prevResult").is_none());
    assert!(f.env(0).contains(&"CNI_NETNS=".to_owned()));
    // Twice is fine too.
    f.cni.del_network_list(&l, &gone).unwrap();
}

#[test]
fn del_ignores_corrupt_cache_and_skips_prev_result_before_040() {
    let f = Fixture::new(&["a", "b", "c"]);
    fs::create_dir_all(f.cache_file("ctr1").parent().unwrap()).unwrap();
    fs::write(f.cache_file("ctr1"), "{garbage").unwrap();
    f.cni
        .del_network_list(&list("1.0.0", json!({})), &rt("ctr1"))
        .unwrap();
    assert!(!f.cache_file("ctr1").exists());

    let old = list("0.3.1", json!({}));
    f.cni.add_network_list(&old, &rt("ctr2")).unwrap();
    f.cni.del_network_list(&old, &rt("ctr2")).unwrap();
    let del_calls: Vec<_> = (0..f.calls().len())
        .filter(|&i| f.calls()[i].starts_with("DEL") && f.calls()[i].ends_with("ctr2"))
        .collect();
    assert_eq!(del_calls.len(), 3);
    for i in del_calls {
        assert!(f.stdin(i).get("prevResult").is_none());
    }
    assert!(!f.cache_file("ctr2").exists());
}

#[test]
fn add_failure_names_plugin_and_does_not_undo() {
    let f = Fixture::new(&["a", "b", "c"]);
    f.fail("b", 11);
    let err = f
        .cni
        .add_network_list(&list("1.0.0", json!({})), &rt("ctr1"))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "network \"net\": plugin \"b\" failed (ADD)"
    );
    let cni = err.cni_error().unwrap();
    assert_eq!((cni.code, cni.msg.as_str()), (11, "b failed"));
    assert!(std::error::Error::source(&err).is_some());
    assert_eq!(f.calls(), ["ADD a ctr1", "ADD b ctr1"]);
    assert!(!f.cache_file("ctr1").exists());
}

#[test]
fn del_failure_keeps_cache_for_retry() {
    let f = Fixture::new(&["a", "b", "c"]);
    let l = list("1.0.0", json!({}));
    f.cni.add_network_list(&l, &rt("ctr1")).unwrap();
    f.fail("b", 5);
    let err = f.cni.del_network_list(&l, &rt("ctr1")).unwrap_err();
    assert!(
        matches!(&err, RuntimeError::Plugin { plugin, command: Command::Del, .. } if plugin == "b")
    );
    assert_eq!(f.calls()[3..], ["DEL c ctr1", "DEL b ctr1"]);
    assert!(f.cache_file("ctr1").exists());
    f.heal("b");
    f.cni.del_network_list(&l, &rt("ctr1")).unwrap();
    assert_eq!(f.stdin(5)["prevResult"]["interfaces"][0]["name"], "c");
    assert!(!f.cache_file("ctr1").exists());
}

#[test]
fn missing_plugin_is_named() {
    let f = Fixture::new(&["a", "c"]);
    let err = f
        .cni
        .add_network_list(&list("1.0.0", json!({})), &rt("ctr1"))
        .unwrap_err();
    let RuntimeError::Plugin { plugin, source, .. } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(plugin, "b");
    assert!(matches!(**source, InvokeError::NotFound { .. }));
    assert!(
        source
            .to_string()
            .starts_with("failed to find plugin \"b\" in path [")
    );
}

#[test]
fn invalid_attachment_is_rejected_before_any_plugin() {
    let f = Fixture::new(&["a", "b", "c"]);
    let l = list("1.0.0", json!({}));
    let cases = [
        RuntimeConf {
            container_id: "../etc".into(),
            ..rt("x")
        },
        RuntimeConf {
            ifname: "eth0/../x".into(),
            ..rt("ctr1")
        },
        RuntimeConf {
            netns: PathBuf::new(),
            ..rt("ctr1")
        },
    ];
    for bad in cases {
        let err = f.cni.add_network_list(&l, &bad).unwrap_err();
        assert!(
            matches!(err, RuntimeError::InvalidRuntimeConf { .. }),
            "{err:?}"
        );
    }
    let escaping = RuntimeConf {
        container_id: "a/b".into(),
        ..rt("x")
    };
    assert!(f.cni.del_network_list(&l, &escaping).is_err());
    assert!(f.calls().is_empty());
}

#[test]
fn check_uses_cached_result_and_honours_gates() {
    let f = Fixture::new(&["a", "b", "c"]);
    let l = list("1.0.0", json!({}));
    f.cni.add_network_list(&l, &rt("ctr1")).unwrap();
    f.cni.check_network_list(&l, &rt("ctr1")).unwrap();
    assert_eq!(
        f.calls()[3..],
        ["CHECK a ctr1", "CHECK b ctr1", "CHECK c ctr1"]
    );
    for call in 3..6 {
        assert_eq!(f.stdin(call)["prevResult"], plugin_result("c", 3, "1.0.0"));
    }

    f.fail("a", 7);
    let err = f.cni.check_network_list(&l, &rt("ctr1")).unwrap_err();
    assert_eq!(err.cni_error().unwrap().code, 7);
    assert_eq!(f.calls().len(), 7, "CHECK stops at the first failure");

    let calls = f.calls().len();
    f.cni
        .check_network_list(&list("1.0.0", json!({"disableCheck": true})), &rt("ctr1"))
        .unwrap();
    f.cni
        .check_network_list(&list("0.3.1", json!({})), &rt("ctr1"))
        .unwrap();
    assert_eq!(f.calls().len(), calls);
}

#[test]
fn gc_deletes_stale_attachments_then_sends_valid_set() {
    let f = Fixture::new(&["a", "b", "c"]);
    let l = list("1.1.0", json!({}));
    f.cni.add_network_list(&l, &rt("ctr1")).unwrap();
    f.cni.add_network_list(&l, &rt("ctr2")).unwrap();
    let keep = [Attachment {
        container_id: "ctr1".into(),
        ifname: "eth0".into(),
    }];
    f.cni.gc_network_list(&l, &keep).unwrap();

    assert_eq!(
        f.calls()[6..],
        [
            "DEL c ctr2",
            "DEL b ctr2",
            "DEL a ctr2",
            "GC a ",
            "GC b ",
            "GC c "
        ]
    );
    // The synthesized DEL ran with the cached parameters.
    assert!(
        f.env(6)
            .contains(&"CNI_NETNS=/var/run/netns/test".to_owned())
    );
    assert_eq!(f.stdin(6)["prevResult"]["interfaces"][0]["name"], "c");
    for call in 9..12 {
        let stdin = f.stdin(call);
        assert_eq!(
            stdin["cni.dev/valid-attachments"],
            json!([{"containerID": "ctr1", "ifname": "eth0"}])
        );
        assert_eq!(
            stdin["cni.dev/attachments"],
            stdin["cni.dev/valid-attachments"]
        );
        assert_eq!(stdin["cniVersion"], "1.1.0");
        assert!(stdin.get("runtimeConfig").is_none());
        assert!(f.env(call).contains(&"CNI_CONTAINERID=".to_owned()));
    }
    assert!(f.cache_file("ctr1").exists());
    assert!(!f.cache_file("ctr2").exists());
    let left: Vec<_> = f
        .cni
        .list_cached_attachments("net")
        .unwrap()
        .iter()
        .map(CachedAttachment::attachment)
        .collect();
    assert_eq!(left, keep);
}

#[test]
fn gc_gates_and_error_collection() {
    let f = Fixture::new(&["a", "b", "c"]);
    // disableGC: nothing at all, not even stale DELs.
    let l = list("1.1.0", json!({"disableGC": true}));
    f.cni.add_network_list(&l, &rt("ctr1")).unwrap();
    f.cni.gc_network_list(&l, &[]).unwrap();
    assert_eq!(f.calls().len(), 3);

    // Before 1.1.0: stale DELs only.
    f.cni
        .gc_network_list(&list("1.0.0", json!({})), &[])
        .unwrap();
    assert_eq!(f.calls()[3..], ["DEL c ctr1", "DEL b ctr1", "DEL a ctr1"]);

    // Every plugin gets its GC even when one fails; all failures reported.
    f.fail("a", 5);
    f.fail("c", 11);
    let err = f
        .cni
        .gc_network_list(&list("1.1.0", json!({})), &[])
        .unwrap_err();
    let RuntimeError::Gc { errors, .. } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(errors.len(), 2);
    assert_eq!(f.calls()[6..], ["GC a ", "GC b ", "GC c "]);
    let msg = err.to_string();
    assert!(
        msg.contains("plugin \"a\" failed (GC)") && msg.contains("c failed"),
        "{msg}"
    );
}

#[test]
fn status_stops_at_first_unavailable_plugin() {
    let f = Fixture::new(&["a", "b", "c"]);
    f.cni
        .status_network_list(&list("1.1.0", json!({})))
        .unwrap();
    assert_eq!(f.calls(), ["STATUS a ", "STATUS b ", "STATUS c "]);
    assert_eq!(f.stdin(0)["name"], "net");

    f.fail("b", CniError::NOT_AVAILABLE);
    let err = f
        .cni
        .status_network_list(&list("1.1.0", json!({})))
        .unwrap_err();
    assert_eq!(err.cni_error().unwrap().code, 50);
    assert_eq!(f.calls()[3..], ["STATUS a ", "STATUS b "]);

    f.cni
        .status_network_list(&list("1.0.0", json!({})))
        .unwrap();
    assert_eq!(f.calls().len(), 5);
}

#[test]
fn version_info_and_legacy_cache() {
    let f = Fixture::new(&["a"]);
    let info = f.cni.get_version_info("a").unwrap();
    assert!(info.supports("1.1.0"));
    assert!(matches!(
        f.cni.get_version_info("zz"),
        Err(RuntimeError::Version { .. })
    ));

    // Before cniCacheV1, libcni wrote the bare result.
    fs::create_dir_all(f.cache_file("old").parent().unwrap()).unwrap();
    fs::write(
        f.cache_file("old"),
        plugin_result("x", 9, "0.4.0").to_string(),
    )
    .unwrap();
    let r = f.cni.get_cached_result("net", &rt("old")).unwrap().unwrap();
    assert_eq!(r.cni_version, "0.4.0");
    // Not a v1 entry, so not an attachment.
    assert!(f.cni.list_cached_attachments("net").unwrap().is_empty());

    fs::write(f.cache_file("bad"), "{").unwrap();
    assert!(matches!(
        f.cni.get_cached_result("net", &rt("bad")),
        Err(RuntimeError::CachedResult { .. })
    ));
}
