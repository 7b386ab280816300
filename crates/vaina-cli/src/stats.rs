//! `vaina stats` and `vaina statsp`: crictl's resource usage of containers and pods. The
//! table samples twice, `--seconds` apart, and shows CPU % from the difference of the
//! cumulative CPU time (as crictl does); `-o json` prints one ListContainerStats /
//! ListPodSandboxStats answer.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_cri::v1 as cri;
use vaina_cri::client::{self, Cri};

use crate::{Output, table};

#[derive(clap::Args)]
pub struct StatsArgs {
    /// Only containers whose id starts with this.
    #[arg(long)]
    id: Option<String>,
    /// Only containers of this pod (id prefix).
    #[arg(short, long)]
    pod: Option<String>,
    /// key=value; repeatable.
    #[arg(short, long)]
    label: Vec<String>,
    /// Sample duration for the CPU %.
    #[arg(short, long, default_value_t = 1)]
    seconds: u64,
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

#[derive(clap::Args)]
pub struct StatspArgs {
    /// Only pods whose id starts with this.
    #[arg(long)]
    id: Option<String>,
    /// key=value; repeatable.
    #[arg(short, long)]
    label: Vec<String>,
    /// Sample duration for the CPU %.
    #[arg(short, long, default_value_t = 1)]
    seconds: u64,
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

fn labels(l: &[String]) -> Result<HashMap<String, String>> {
    l.iter()
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("invalid --label {l:?}: key=value"))
        })
        .collect()
}

fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

fn v(x: &Option<cri::UInt64Value>) -> u64 {
    x.as_ref().map(|x| x.value).unwrap_or(0)
}

/// CPU % between two samples (cumulative ns at timestamps), crictl's way.
fn cpu_percent(old: Option<&cri::CpuUsage>, new: Option<&cri::CpuUsage>) -> String {
    match (old, new) {
        (Some(o), Some(n)) if n.timestamp > o.timestamp => {
            let used = v(&n.usage_core_nano_seconds).saturating_sub(v(&o.usage_core_nano_seconds));
            format!(
                "{:.2}",
                used as f64 / (n.timestamp - o.timestamp) as f64 * 100.0
            )
        }
        (_, Some(n)) if n.usage_nano_cores.is_some() => {
            format!("{:.2}", v(&n.usage_nano_cores) as f64 / 1e7)
        }
        _ => "0.00".into(),
    }
}

/// 1.5MB-style sizes (crictl's units, base 1000).
fn size(b: u64) -> String {
    const U: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut x = b as f64;
    let mut i = 0;
    while x >= 1000.0 && i < U.len() - 1 {
        x /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{b}B")
    } else {
        format!("{x:.4}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
            + U[i]
    }
}

async fn list_containers(
    c: &mut Cri,
    f: &cri::ContainerStatsFilter,
) -> Result<Vec<cri::ContainerStats>> {
    Ok(c.runtime
        .list_container_stats(cri::ListContainerStatsRequest {
            filter: Some(f.clone()),
        })
        .await
        .map_err(status)?
        .into_inner()
        .stats)
}

async fn list_pods(
    c: &mut Cri,
    f: &cri::PodSandboxStatsFilter,
) -> Result<Vec<cri::PodSandboxStats>> {
    Ok(c.runtime
        .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest {
            filter: Some(f.clone()),
        })
        .await
        .map_err(status)?
        .into_inner()
        .stats)
}

pub async fn containers(endpoint: &str, a: StatsArgs) -> Result<()> {
    let mut c = client::connect(endpoint).await?;
    let f = cri::ContainerStatsFilter {
        id: a.id.unwrap_or_default(),
        pod_sandbox_id: a.pod.unwrap_or_default(),
        label_selector: labels(&a.label)?,
    };
    if let Output::Json = a.output {
        let stats = list_containers(&mut c, &f).await?;
        println!(
            "{}",
            serde_json::to_string_pretty(&cri::ListContainerStatsResponse { stats })?
        );
        return Ok(());
    }
    let first = list_containers(&mut c, &f).await?;
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    let second = list_containers(&mut c, &f).await?;
    let old: HashMap<String, cri::ContainerStats> = first
        .into_iter()
        .map(|s| (s.attributes.clone().unwrap_or_default().id, s))
        .collect();
    let rows: Vec<Vec<String>> = second
        .iter()
        .map(|s| {
            let attr = s.attributes.clone().unwrap_or_default();
            let prev = old.get(&attr.id).and_then(|o| o.cpu.as_ref());
            let wl = s.writable_layer.clone().unwrap_or_default();
            vec![
                table::short_id(&attr.id),
                attr.metadata.unwrap_or_default().name,
                cpu_percent(prev, s.cpu.as_ref()),
                size(
                    s.memory
                        .as_ref()
                        .map(|m| v(&m.working_set_bytes))
                        .unwrap_or(0),
                ),
                size(v(&wl.used_bytes)),
                v(&wl.inodes_used).to_string(),
            ]
        })
        .collect();
    table::print(
        &["CONTAINER", "NAME", "CPU %", "MEM", "DISK", "INODES"],
        &rows,
    );
    Ok(())
}

pub async fn pods(endpoint: &str, a: StatspArgs) -> Result<()> {
    let mut c = client::connect(endpoint).await?;
    let f = cri::PodSandboxStatsFilter {
        id: a.id.unwrap_or_default(),
        label_selector: labels(&a.label)?,
    };
    if let Output::Json = a.output {
        let stats = list_pods(&mut c, &f).await?;
        println!(
            "{}",
            serde_json::to_string_pretty(&cri::ListPodSandboxStatsResponse { stats })?
        );
        return Ok(());
    }
    let first = list_pods(&mut c, &f).await?;
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    let second = list_pods(&mut c, &f).await?;
    let old: HashMap<String, cri::PodSandboxStats> = first
        .into_iter()
        .map(|s| (s.attributes.clone().unwrap_or_default().id, s))
        .collect();
    let rows: Vec<Vec<String>> = second
        .iter()
        .map(|s| {
            let attr = s.attributes.clone().unwrap_or_default();
            let lin = s.linux.clone().unwrap_or_default();
            let prev = old
                .get(&attr.id)
                .and_then(|o| o.linux.as_ref())
                .and_then(|l| l.cpu.as_ref());
            let net = lin.network.clone().unwrap_or_default();
            let (rx, tx) = net
                .interfaces
                .iter()
                .fold((0, 0), |(r, t), i| (r + v(&i.rx_bytes), t + v(&i.tx_bytes)));
            vec![
                attr.metadata.unwrap_or_default().name,
                table::short_id(&attr.id),
                cpu_percent(prev, lin.cpu.as_ref()),
                size(
                    lin.memory
                        .as_ref()
                        .map(|m| v(&m.working_set_bytes))
                        .unwrap_or(0),
                ),
                size(rx),
                size(tx),
                lin.process
                    .as_ref()
                    .map(|p| v(&p.process_count).to_string())
                    .unwrap_or_default(),
            ]
        })
        .collect();
    table::print(
        &["POD", "POD ID", "CPU %", "MEM", "RX", "TX", "PROCS"],
        &rows,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_cpu() {
        assert_eq!(size(999), "999B");
        assert_eq!(size(1_500_000), "1.5MB");
        let o = cri::CpuUsage {
            timestamp: 0,
            usage_core_nano_seconds: Some(cri::UInt64Value { value: 0 }),
            usage_nano_cores: None,
        };
        let n = cri::CpuUsage {
            timestamp: 1_000_000_000,
            usage_core_nano_seconds: Some(cri::UInt64Value { value: 250_000_000 }),
            usage_nano_cores: None,
        };
        assert_eq!(cpu_percent(Some(&o), Some(&n)), "25.00");
        assert_eq!(cpu_percent(None, None), "0.00");
    }
}
