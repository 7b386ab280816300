//! CRI client dispatch: version, info and the pod sandbox verbs (runp, pods, inspectp,
//! stopp, rmp) here; container verbs in `containers`, image verbs in `images`.

use std::collections::HashMap;

use anyhow::{Context, Result, bail};
use k8s_cri::v1 as cri;

use crate::podconfig::PodConfig;
use vaina_cri::client;

use crate::{Cmd, Output, images, table};

#[derive(clap::Args)]
pub struct ListArgs {
    /// Only pods whose id starts with this.
    #[arg(long)]
    id: Option<String>,
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    namespace: Option<String>,
    /// ready or notready.
    #[arg(long)]
    state: Option<String>,
    /// key=value; repeatable.
    #[arg(long)]
    label: Vec<String>,
    /// Only ids.
    #[arg(short, long)]
    quiet: bool,
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

pub async fn run(endpoint: &str, cmd: Cmd) -> Result<()> {
    let mut c = client::connect(endpoint).await?;
    match cmd {
        Cmd::Demo(_) | Cmd::Image(_) => unreachable!("dispatched without an endpoint"),
        Cmd::Version => {
            let v = c
                .runtime
                .version(cri::VersionRequest::default())
                .await?
                .into_inner();
            println!("Version:  {}", v.version);
            println!("RuntimeName:  {}", v.runtime_name);
            println!("RuntimeVersion:  {}", v.runtime_version);
            println!("RuntimeApiVersion:  {}", v.runtime_api_version);
        }
        Cmd::Info => {
            let s = c
                .runtime
                .status(cri::StatusRequest { verbose: true })
                .await?
                .into_inner();
            println!("{}", serde_json::to_string_pretty(&s)?);
        }
        Cmd::Runp { config, runtime } => {
            let text = std::fs::read_to_string(&config)
                .with_context(|| format!("read {}", config.display()))?;
            let cfg = PodConfig::parse(&text, &config.display().to_string())?.into_cri()?;
            let id = c
                .runtime
                .run_pod_sandbox(cri::RunPodSandboxRequest {
                    config: Some(cfg),
                    runtime_handler: runtime,
                })
                .await
                .map_err(status)?
                .into_inner()
                .pod_sandbox_id;
            println!("{id}");
        }
        Cmd::Pods(a) => list(&mut c, a).await?,
        Cmd::Inspectp { ids } => {
            need_ids(&ids)?;
            for id in ids {
                let s = c
                    .runtime
                    .pod_sandbox_status(cri::PodSandboxStatusRequest {
                        pod_sandbox_id: id,
                        verbose: true,
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                println!("{}", serde_json::to_string_pretty(&s)?);
            }
        }
        Cmd::Stopp { ids } => {
            need_ids(&ids)?;
            for id in ids {
                c.runtime
                    .stop_pod_sandbox(cri::StopPodSandboxRequest {
                        pod_sandbox_id: id.clone(),
                    })
                    .await
                    .map_err(status)?;
                println!("Stopped sandbox {id}");
            }
        }
        Cmd::Rmp { ids } => {
            need_ids(&ids)?;
            for id in ids {
                c.runtime
                    .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                        pod_sandbox_id: id.clone(),
                    })
                    .await
                    .map_err(status)?;
                println!("Removed sandbox {id}");
            }
        }
        Cmd::Images(a) => images::list(&mut c, a).await?,
        Cmd::Inspecti { refs } => images::inspect(&mut c, refs).await?,
        Cmd::Rmi { refs } => images::rmi(&mut c, refs).await?,
        Cmd::Pull(a) => images::pull(&mut c, a).await?,
        Cmd::Create(a) => crate::containers::create(&mut c, a).await?,
        Cmd::Run(a) => crate::containers::run(&mut c, a).await?,
        Cmd::Start(a) => crate::containers::start(&mut c, a).await?,
        Cmd::Stop(a) => crate::containers::stop(&mut c, a).await?,
        Cmd::Rm(a) => crate::containers::rm(&mut c, a).await?,
        Cmd::Ps(a) => crate::containers::list(&mut c, a).await?,
        Cmd::Inspect(a) => crate::containers::inspect(&mut c, a).await?,
        Cmd::Exec(a) => crate::containers::exec(&mut c, a).await?,
        Cmd::Attach(a) => {
            let code = crate::streaming::attach(&mut c, a).await?;
            if code != 0 {
                std::process::exit(code);
            }
        }
        Cmd::PortForward(a) => crate::streaming::port_forward(&mut c, a).await?,
        Cmd::Logs(a) => crate::containers::logs(&mut c, a).await?,
    }
    Ok(())
}

fn need_ids(ids: &[String]) -> Result<()> {
    if ids.is_empty() {
        bail!("no pod sandbox id given");
    }
    Ok(())
}

/// A gRPC status as "code: message".
fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

async fn list(c: &mut client::Cri, a: ListArgs) -> Result<()> {
    let state = match a.state.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None => None,
        Some("ready") => Some(cri::PodSandboxState::SandboxReady),
        Some("notready") => Some(cri::PodSandboxState::SandboxNotready),
        Some(other) => bail!("invalid --state {other:?}: ready or notready"),
    };
    let mut label_selector = HashMap::new();
    for l in &a.label {
        let (k, v) = l
            .split_once('=')
            .with_context(|| format!("invalid --label {l:?}: key=value"))?;
        label_selector.insert(k.to_string(), v.to_string());
    }
    let filter = cri::PodSandboxFilter {
        id: a.id.unwrap_or_default(),
        state: state.map(|s| cri::PodSandboxStateValue { state: s as i32 }),
        label_selector,
    };
    let mut items = c
        .runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(filter),
        })
        .await
        .map_err(status)?
        .into_inner()
        .items;
    items.retain(|p| {
        let m = p.metadata.clone().unwrap_or_default();
        a.name.as_ref().is_none_or(|n| m.name.contains(n.as_str()))
            && a.namespace.as_ref().is_none_or(|n| &m.namespace == n)
    });
    items.sort_by_key(|p| std::cmp::Reverse(p.created_at));
    if a.quiet {
        for p in &items {
            println!("{}", p.id);
        }
        return Ok(());
    }
    match a.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&items)?),
        Output::Table => {
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|p| {
                    let m = p.metadata.clone().unwrap_or_default();
                    let state = if p.state == cri::PodSandboxState::SandboxReady as i32 {
                        "Ready"
                    } else {
                        "NotReady"
                    };
                    vec![
                        table::short_id(&p.id),
                        table::ago(p.created_at),
                        state.into(),
                        m.name,
                        m.namespace,
                        m.attempt.to_string(),
                        if p.runtime_handler.is_empty() {
                            "(default)".into()
                        } else {
                            p.runtime_handler.clone()
                        },
                    ]
                })
                .collect();
            table::print(
                &[
                    "POD ID",
                    "CREATED",
                    "STATE",
                    "NAME",
                    "NAMESPACE",
                    "ATTEMPT",
                    "RUNTIME",
                ],
                &rows,
            );
        }
    }
    Ok(())
}
