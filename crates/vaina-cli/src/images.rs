//! Image verbs: images, inspecti, rmi, pull over the CRI (any runtime), and `image import`,
//! which writes the node's image store directly (the CRI has no import).
//!
//! `pull` draws a bar per layer from the progress vainad reports in a verbose ImageStatus
//! while the pull runs (the `pullProgress` info entry), polled every 100 ms beside the
//! PullImage call; a runtime that reports none (containerd) gets a spinner.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_cri::v1 as cri;
use vaina_cri::client::Cri;
use vaina_image::{ImageStore, Reference};

use crate::{Output, table};

#[derive(clap::Args)]
pub struct ListArgs {
    /// Only this image: a reference (busybox, busybox:1.36, …@sha256:…), an id or id prefix.
    reference: Option<String>,
    /// Only ids.
    #[arg(short, long)]
    quiet: bool,
    /// Show a DIGEST column (the manifest digest).
    #[arg(long)]
    digests: bool,
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

#[derive(clap::Args)]
pub struct PullArgs {
    /// The image: busybox, registry.k8s.io/pause:3.9, name@sha256:…
    reference: String,
    /// Registry credentials; without :PASS the password is read from the terminal (or one
    /// line of stdin).
    #[arg(long, value_name = "USER[:PASS]")]
    creds: Option<String>,
    /// Registry credentials as base64 of "user:password" (a docker config's `auth`).
    #[arg(long, value_name = "BASE64", conflicts_with = "creds")]
    auth: Option<String>,
    /// A bearer token for the registry, sent as is.
    #[arg(long, value_name = "TOKEN", conflicts_with_all = ["creds", "auth"])]
    registry_token: Option<String>,
}

#[derive(clap::Subcommand)]
pub enum ImageCmd {
    /// Import OCI image layouts (directory or tar) and docker-archive tarballs into the
    /// node's image store. Runs in this process against the store directory, not through
    /// the CRI (which has no import); the store locks itself, so vainad may be running.
    Import {
        /// vainad's --root: the store is ROOT/lib/images; without it, vainad's default
        /// store (/var/lib/vaina/images).
        #[arg(long)]
        root: Option<PathBuf>,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// A gRPC status as "code: message".
fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

fn spec(image: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: image.to_string(),
        ..Default::default()
    })
}

/// The store vainad uses with the same `--root` (the runtime keeps it in `<cfg.root>/images`).
fn store_dir(root: Option<&std::path::Path>) -> PathBuf {
    let cfg = match root {
        Some(r) => vaina_runtime::Config::under(r),
        None => vaina_runtime::Config::default(),
    };
    cfg.root.join("images")
}

/// `vaina image …`: needs no endpoint.
pub fn image(cmd: ImageCmd) -> Result<()> {
    match cmd {
        ImageCmd::Import { root, files } => {
            let dir = store_dir(root.as_deref());
            let store = ImageStore::open(&dir)
                .with_context(|| format!("open the image store {}", dir.display()))?;
            for f in files {
                let images = store
                    .import(&f)
                    .with_context(|| format!("import {}", f.display()))?;
                for image in images {
                    if image.repo_tags.is_empty() {
                        println!("Imported {}", image.id);
                    }
                    for tag in &image.repo_tags {
                        println!("Imported {tag} ({})", image.id);
                    }
                }
            }
        }
    }
    Ok(())
}

/// Whether `image` is what `reference` names: its id, an id prefix, one of its names once
/// normalised, or, for a bare repository name, any tag of it (as `docker images busybox`).
/// Applied in the client, so it works the same with runtimes that ignore ListImages' filter
/// (containerd does) or apply it as ImageStatus resolves (vainad: `busybox` is `:latest`).
fn matches(image: &cri::Image, reference: &str) -> bool {
    let hex = image.id.strip_prefix("sha256:").unwrap_or(&image.id);
    let prefix = reference.strip_prefix("sha256:").unwrap_or(reference);
    if !prefix.is_empty()
        && prefix.bytes().all(|b| b.is_ascii_hexdigit())
        && hex.starts_with(prefix)
    {
        return true;
    }
    let Ok(name) = Reference::parse(reference) else {
        return false;
    };
    let last = reference.rsplit('/').next().unwrap_or(reference);
    if !last.contains(':') && !reference.contains('@') {
        let repo = name.name();
        return image
            .repo_tags
            .iter()
            .chain(&image.repo_digests)
            .filter_map(|n| Reference::parse(n).ok())
            .any(|n| n.name() == repo);
    }
    let name = name.to_string();
    image.repo_tags.contains(&name) || image.repo_digests.contains(&name)
}

/// `docker.io/library/busybox:latest` → (`docker.io/library/busybox`, `latest`); a colon
/// before the last `/` is a registry port, not a tag.
fn split_tag(tag: &str) -> (&str, &str) {
    let slash = tag.rfind('/').map_or(0, |i| i + 1);
    match tag[slash..].rfind(':') {
        Some(i) => (&tag[..slash + i], &tag[slash + i + 1..]),
        None => (tag, "<none>"),
    }
}

/// One (image, tag) pair per repo tag; an image without tags shows its repositories from
/// its digests, or `<none>` (as crictl does).
fn repo_tag_pairs(image: &cri::Image) -> Vec<(String, String)> {
    if !image.repo_tags.is_empty() {
        return image
            .repo_tags
            .iter()
            .map(|t| {
                let (repo, tag) = split_tag(t);
                (repo.to_string(), tag.to_string())
            })
            .collect();
    }
    let mut pairs: Vec<(String, String)> = image
        .repo_digests
        .iter()
        .filter_map(|d| d.split_once('@'))
        .map(|(repo, _)| (repo.to_string(), "<none>".to_string()))
        .collect();
    if pairs.is_empty() {
        pairs.push(("<none>".into(), "<none>".into()));
    }
    pairs
}

/// Sizes as crictl prints them: decimal units, three significant digits (`4.26MB`).
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    // 999.5 would print as "1e+03" with three digits: move up a unit before rounding does.
    while v >= 999.5 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    let digits = if v >= 99.95 {
        0
    } else if v >= 9.995 {
        1
    } else {
        2
    };
    let mut s = format!("{v:.digits$}");
    if s.contains('.') {
        s = s.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("{s}{}", UNITS[unit])
}

pub async fn list(c: &mut Cri, a: ListArgs) -> Result<()> {
    let mut images = c
        .image
        .list_images(cri::ListImagesRequest { filter: None })
        .await
        .map_err(status)?
        .into_inner()
        .images;
    if let Some(r) = &a.reference {
        images.retain(|i| matches(i, r));
    }
    images.sort_by(|x, y| x.repo_tags.cmp(&y.repo_tags).then(x.id.cmp(&y.id)));
    if a.quiet {
        for i in &images {
            println!("{}", i.id);
        }
        return Ok(());
    }
    match a.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&cri::ListImagesResponse { images })?
        ),
        Output::Table => {
            let mut rows = Vec::new();
            for i in &images {
                let id = table::short_id(i.id.strip_prefix("sha256:").unwrap_or(&i.id));
                let digest = i
                    .repo_digests
                    .first()
                    .and_then(|d| d.split_once('@'))
                    .map(|(_, d)| table::short_id(d.strip_prefix("sha256:").unwrap_or(d)))
                    .unwrap_or_else(|| "<none>".into());
                for (repo, tag) in repo_tag_pairs(i) {
                    let mut row = vec![repo, tag];
                    if a.digests {
                        row.push(digest.clone());
                    }
                    row.extend([id.clone(), human_size(i.size)]);
                    rows.push(row);
                }
            }
            let mut header = vec!["IMAGE", "TAG"];
            if a.digests {
                header.push("DIGEST");
            }
            header.extend(["IMAGE ID", "SIZE"]);
            table::print(&header, &rows);
        }
    }
    Ok(())
}

async fn status_of(
    c: &mut Cri,
    reference: &str,
    verbose: bool,
) -> Result<cri::ImageStatusResponse> {
    let r = c
        .image
        .image_status(cri::ImageStatusRequest {
            image: spec(reference),
            verbose,
        })
        .await
        .map_err(status)?
        .into_inner();
    if r.image.is_none() {
        bail!("no such image {reference:?}");
    }
    Ok(r)
}

/// ImageStatus with verbose info, as crictl inspecti prints it: the info values that are
/// JSON are embedded as JSON.
pub async fn inspect(c: &mut Cri, refs: Vec<String>) -> Result<()> {
    if refs.is_empty() {
        bail!("no image given");
    }
    for r in refs {
        let s = status_of(c, &r, true).await?;
        let info: serde_json::Map<String, serde_json::Value> = s
            .info
            .into_iter()
            .map(|(k, v)| {
                let v = serde_json::from_str(&v).unwrap_or(serde_json::Value::String(v));
                (k, v)
            })
            .collect();
        let out = serde_json::json!({ "status": s.image, "info": info });
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}

/// Removes each image with all its names (what the CRI's RemoveImage does); unlike the RPC,
/// a name that matches nothing is an error here, as in crictl.
pub async fn rmi(c: &mut Cri, refs: Vec<String>) -> Result<()> {
    if refs.is_empty() {
        bail!("no image given");
    }
    for r in refs {
        let image = status_of(c, &r, false).await?.image.expect("checked");
        c.image
            .remove_image(cri::RemoveImageRequest {
                image: spec(&image.id),
            })
            .await
            .map_err(status)?;
        if image.repo_tags.is_empty() {
            println!("Deleted: {}", image.id);
        }
        for t in &image.repo_tags {
            println!("Deleted: {t}");
        }
    }
    Ok(())
}

/// The key of vainad's verbose ImageStatus info that carries a running pull's progress.
const PULL_PROGRESS_KEY: &str = "pullProgress";

/// One layer of a running pull, as vainad reports it.
#[derive(Debug, serde::Deserialize, PartialEq, Eq)]
struct LayerProgress {
    digest: String,
    total: u64,
    done: u64,
    /// waiting, downloading, downloaded or present.
    status: String,
}

/// The layers in a verbose ImageStatus's info, if it carries pull progress.
fn layers_of(info: &HashMap<String, String>) -> Option<Vec<LayerProgress>> {
    serde_json::from_str(info.get(PULL_PROGRESS_KEY)?).ok()
}

/// The password for `--creds USER`: from the terminal without echo, or one line of stdin.
fn read_password(user: &str) -> Result<String> {
    use std::io::{BufRead, Write};
    let stdin = std::io::stdin();
    let mut line = String::new();
    if stdin.is_terminal() {
        use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
        eprint!("Password for {user}: ");
        std::io::stderr().flush()?;
        let saved = tcgetattr(&stdin).context("read the terminal's settings")?;
        let mut quiet = saved.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        tcsetattr(&stdin, SetArg::TCSANOW, &quiet).context("turn off echo")?;
        let read = stdin.lock().read_line(&mut line);
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &saved);
        eprintln!();
        read.context("read the password")?;
    } else {
        stdin
            .lock()
            .read_line(&mut line)
            .context("read the password from stdin")?;
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// The CRI credentials the flags give, if any.
fn auth_config(a: &PullArgs) -> Result<Option<cri::AuthConfig>> {
    if let Some(creds) = &a.creds {
        let (username, password) = match creds.split_once(':') {
            Some((u, p)) => (u.to_owned(), p.to_owned()),
            None => (creds.clone(), read_password(creds)?),
        };
        if username.is_empty() {
            bail!("--creds needs a user name (USER[:PASS])");
        }
        return Ok(Some(cri::AuthConfig {
            username,
            password,
            ..Default::default()
        }));
    }
    if let Some(auth) = &a.auth {
        if auth.trim().is_empty() {
            bail!("--auth is empty");
        }
        return Ok(Some(cri::AuthConfig {
            auth: auth.trim().to_owned(),
            ..Default::default()
        }));
    }
    if let Some(token) = &a.registry_token {
        if token.is_empty() {
            bail!("--registry-token is empty");
        }
        return Ok(Some(cri::AuthConfig {
            registry_token: token.clone(),
            ..Default::default()
        }));
    }
    Ok(None)
}

/// The bars of a pull: a spinner for the pull as a whole, and one bar per layer once the
/// runtime reports layers. Drawn on stderr, hidden when it is not a terminal.
struct Bars {
    multi: indicatif::MultiProgress,
    spinner: indicatif::ProgressBar,
    layers: HashMap<String, indicatif::ProgressBar>,
}

impl Bars {
    fn new(reference: &str) -> Bars {
        let multi = indicatif::MultiProgress::new();
        let spinner = multi.add(indicatif::ProgressBar::new_spinner());
        spinner.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                .expect("valid template"),
        );
        spinner.set_message(format!("pulling {reference}"));
        spinner.enable_steady_tick(Duration::from_millis(100));
        Bars {
            multi,
            spinner,
            layers: HashMap::new(),
        }
    }

    fn update(&mut self, layers: &[LayerProgress]) {
        for l in layers {
            let bar = self.layers.entry(l.digest.clone()).or_insert_with(|| {
                let bar = self.multi.add(indicatif::ProgressBar::new(l.total));
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{prefix} [{bar:30}] {bytes:>10}/{total_bytes:<10} {msg}",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
                let hex = l.digest.strip_prefix("sha256:").unwrap_or(&l.digest);
                bar.set_prefix(table::short_id(hex));
                bar
            });
            if bar.is_finished() {
                continue;
            }
            bar.set_length(l.total);
            bar.set_position(l.done.min(l.total));
            match l.status.as_str() {
                "present" => bar.finish_with_message("present"),
                "downloaded" => bar.finish_with_message("done"),
                other => bar.set_message(other.to_owned()),
            }
        }
    }

    /// The pull ended: bars of layers still running stop where they are (the pull failed)
    /// or are complete (it succeeded).
    fn finish(self, ok: bool) {
        for bar in self.layers.values() {
            if !bar.is_finished() {
                if ok {
                    bar.set_position(bar.length().unwrap_or(0));
                    bar.finish_with_message("done");
                } else {
                    bar.abandon_with_message("failed");
                }
            }
        }
        self.spinner.finish_and_clear();
    }
}

/// PullImage with the flags' credentials, polling ImageStatus(verbose) for progress while
/// it runs. Prints what crictl prints.
pub async fn pull(c: &mut Cri, a: PullArgs) -> Result<()> {
    let auth = auth_config(&a)?;
    let mut pulling = c.image.clone();
    let request = cri::PullImageRequest {
        image: spec(&a.reference),
        auth,
        sandbox_config: None,
    };
    let pull = pulling.pull_image(request);
    tokio::pin!(pull);
    let mut bars = Bars::new(&a.reference);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let result = loop {
        tokio::select! {
            r = &mut pull => break r,
            _ = tick.tick() => {
                let status = c.image.image_status(cri::ImageStatusRequest {
                    image: spec(&a.reference),
                    verbose: true,
                });
                // The pull's own answer is what counts: a poll that fails or finds nothing
                // leaves the bars as they are.
                if let Ok(r) = status.await
                    && let Some(layers) = layers_of(&r.get_ref().info)
                {
                    bars.update(&layers);
                }
            }
        }
    };
    bars.finish(result.is_ok());
    let image_ref = result.map_err(status)?.into_inner().image_ref;
    println!("Image is up to date for {image_ref}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_progress_is_read_from_the_verbose_info() {
        let info = HashMap::from([(
            PULL_PROGRESS_KEY.to_string(),
            r#"[{"digest":"sha256:ab","total":10,"done":4,"status":"downloading"}]"#.to_string(),
        )]);
        assert_eq!(
            layers_of(&info),
            Some(vec![LayerProgress {
                digest: "sha256:ab".into(),
                total: 10,
                done: 4,
                status: "downloading".into()
            }])
        );
        assert_eq!(layers_of(&HashMap::new()), None);
        let garbage = HashMap::from([(PULL_PROGRESS_KEY.to_string(), "{".to_string())]);
        assert_eq!(layers_of(&garbage), None);
    }

    #[test]
    fn credentials_from_the_flags() {
        let args = |creds: Option<&str>, auth: Option<&str>, token: Option<&str>| PullArgs {
            reference: "busybox".into(),
            creds: creds.map(Into::into),
            auth: auth.map(Into::into),
            registry_token: token.map(Into::into),
        };
        assert_eq!(auth_config(&args(None, None, None)).unwrap(), None);
        let a = auth_config(&args(Some("me:se:cret"), None, None))
            .unwrap()
            .unwrap();
        assert_eq!((&*a.username, &*a.password), ("me", "se:cret"));
        let a = auth_config(&args(None, Some(" bWU6cA== "), None))
            .unwrap()
            .unwrap();
        assert_eq!(a.auth, "bWU6cA==");
        let a = auth_config(&args(None, None, Some("tok")))
            .unwrap()
            .unwrap();
        assert_eq!(a.registry_token, "tok");
        assert!(auth_config(&args(Some(":pw"), None, None)).is_err());
        assert!(auth_config(&args(None, Some(""), None)).is_err());
        assert!(auth_config(&args(None, None, Some(""))).is_err());
    }

    #[test]
    fn sizes_like_crictl() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1000), "1kB");
        assert_eq!(human_size(1234), "1.23kB");
        assert_eq!(human_size(4_261_234), "4.26MB");
        assert_eq!(human_size(12_345_678), "12.3MB");
        assert_eq!(human_size(123_456_789), "123MB");
        assert_eq!(human_size(999_999), "1MB");
    }

    #[test]
    fn tags_split_after_the_registry_port() {
        assert_eq!(
            split_tag("docker.io/library/busybox:latest"),
            ("docker.io/library/busybox", "latest")
        );
        assert_eq!(
            split_tag("localhost:5000/foo:1.0"),
            ("localhost:5000/foo", "1.0")
        );
        assert_eq!(
            split_tag("localhost:5000/foo"),
            ("localhost:5000/foo", "<none>")
        );
    }

    #[test]
    fn references_match_normalised_names_and_id_prefixes() {
        let image = cri::Image {
            id: format!("sha256:abcdef{}", "0".repeat(58)),
            repo_tags: vec!["docker.io/library/busybox:latest".into()],
            repo_digests: vec![format!(
                "docker.io/library/busybox@sha256:{}",
                "1".repeat(64)
            )],
            ..Default::default()
        };
        assert!(matches(&image, "busybox"));
        assert!(matches(&image, "busybox:latest"));
        assert!(matches(&image, "docker.io/library/busybox:latest"));
        assert!(matches(
            &image,
            &format!("busybox@sha256:{}", "1".repeat(64))
        ));
        assert!(matches(&image, "abcdef"));
        assert!(matches(&image, "sha256:abc"));
        assert!(!matches(&image, "busybox:1.36"));
        let other_tag = cri::Image {
            repo_tags: vec!["docker.io/library/busybox:1.36".into()],
            ..image.clone()
        };
        assert!(
            matches(&other_tag, "busybox"),
            "a bare name matches every tag"
        );
        assert!(!matches(&other_tag, "busybox:latest"));
        assert!(!matches(&other_tag, "library/busybox2"));
        assert!(!matches(&image, "abd"));
        assert!(!matches(&image, "nginx"));
    }
}
