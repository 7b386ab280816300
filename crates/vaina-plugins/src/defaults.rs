//! The network a node gets when it has no CNI config: the seed's `cni0` bridge on
//! 10.88.0.0/16 (the range containerd and CRI-O ship), masquerade, and host ports.

/// Default conflist, with vaina's plugin names. `{data_dir}` is the IPAM store root.
pub fn default_conflist(data_dir: &str) -> String {
    format!(
        r#"{{
  "cniVersion": "1.1.0",
  "cniVersions": ["1.0.0", "1.1.0"],
  "name": "vaina",
  "plugins": [
    {{
      "type": "vaina-bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {{
        "type": "vaina-host-local",
        "ranges": [[{{ "subnet": "10.88.0.0/16" }}]],
        "routes": [{{ "dst": "0.0.0.0/0" }}],
        "dataDir": "{data_dir}"
      }}
    }},
    {{ "type": "vaina-portmap", "capabilities": {{ "portMappings": true }} }}
  ]
}}
"#
    )
}

/// The loopback network every sandbox also gets (containerd configures it the same way).
pub const LOOPBACK_CONFLIST: &str = r#"{
  "cniVersion": "1.1.0",
  "name": "vaina-loopback",
  "plugins": [{ "type": "vaina-loopback" }]
}
"#;
