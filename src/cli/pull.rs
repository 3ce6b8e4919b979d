//! `skiff pull IMAGE`: pulls through skiffd, with a progress bar per layer on a terminal and
//! plain lines otherwise.

use std::collections::BTreeMap;
use std::io::IsTerminal;

use hyper::Method;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Deserialize;

use super::client::{Client, with_query};
use super::images::IMAGES_PATH;
use super::{Error, out};

/// Arguments of `skiff pull`.
#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// Image to pull, e.g. `busybox`, `registry.example.com:5000/team/app:1.0`, `name@sha256:...`.
    pub image: String,
    /// Print only the image ID when done.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

/// One line of skiffd's pull stream.
#[derive(Debug, Deserialize)]
pub struct Line {
    #[serde(default)]
    pub layer: Option<String>,
    #[serde(default)]
    pub index: usize,
    #[serde(default)]
    pub layers: usize,
    #[serde(default)]
    pub done: u64,
    #[serde(default)]
    pub total: u64,
    #[serde(default)]
    pub phase: String,
    #[serde(default)]
    pub image: Option<images::Image>,
    #[serde(default)]
    pub error: Option<String>,
}

/// What the display knows about one layer.
#[derive(Debug, Clone, Default)]
pub struct LayerState {
    pub layer: String,
    pub done: u64,
    pub total: u64,
    pub phase: String,
}

/// Runs `skiff pull`.
pub async fn run(client: &Client, args: PullArgs) -> Result<u8, Error> {
    let path = with_query(&format!("{IMAGES_PATH}/pull"), &[("image", &args.image)]);
    let mut stream = client.stream(Method::POST, &path).await?;
    let tty = std::io::stdout().is_terminal() && !args.quiet;
    if !args.quiet {
        out(&format!("Pulling {}\n", args.image))?;
    }
    let mut layers: BTreeMap<usize, LayerState> = BTreeMap::new();
    let mut bars = tty.then(Bars::new);
    let mut buf = Vec::new();
    let mut result = None;
    while let Some(chunk) = stream
        .next_chunk()
        .await
        .map_err(|e| Error::Usage(format!("reading the pull stream: {e}")))?
    {
        buf.extend_from_slice(&chunk);
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let raw: Vec<u8> = buf.drain(..=nl).collect();
            let Ok(line) = serde_json::from_slice::<Line>(&raw) else {
                continue;
            };
            if line.image.is_some() || line.error.is_some() {
                result = Some(line);
                continue;
            }
            let Some(digest) = line.layer.clone() else {
                continue;
            };
            let entry = layers.entry(line.index).or_default();
            let changed = entry.phase != line.phase;
            entry.layer = digest;
            entry.done = line.done;
            entry.total = line.total;
            entry.phase = line.phase.clone();
            if args.quiet {
                continue;
            }
            if let Some(bars) = &mut bars {
                bars.update(line.index, entry, changed);
            } else if changed {
                out(&format!("{}\n", plain_line(entry)))?;
            }
        }
    }
    if let Some(bars) = bars {
        bars.end();
    }
    match result {
        Some(Line {
            image: Some(image), ..
        }) => {
            if args.quiet {
                out(&format!("{}\n", image.id))?;
            } else {
                let name = images::normalize(&args.image).unwrap_or_else(|_| args.image.clone());
                // No layer reports: the manifest was in the store already.
                let status = if layers.is_empty() {
                    format!("Image is up to date for {name}")
                } else {
                    format!("Downloaded newer image for {name}")
                };
                out(&format!(
                    "Digest: {}\nImage ID: {}\nStatus: {status}\n{name}\n",
                    image.manifest_digest, image.id
                ))?;
            }
            Ok(0)
        }
        Some(Line { error: Some(e), .. }) => {
            eprintln!("Error: failed to pull image \"{}\": {e}", args.image);
            Ok(1)
        }
        _ => {
            eprintln!("Error: the pull stream ended without a result");
            Ok(1)
        }
    }
}

/// The terminal's display: a bar per layer, in the manifest's order, as wide as the terminal
/// (indicatif reads its width at every draw) and redrawn at most 10 times a second.
struct Bars {
    multi: MultiProgress,
    bars: BTreeMap<usize, ProgressBar>,
    downloading: ProgressStyle,
    status: ProgressStyle,
}

/// `abcdef012345: Downloading [=====>     ] 1.2MB/5.0MB 3.4MB/s`, docker's units.
const DOWNLOADING: &str =
    "{prefix}: {msg} [{wide_bar}] {decimal_bytes}/{decimal_total_bytes} {decimal_bytes_per_sec}";
/// `abcdef012345: Pull complete`.
const STATUS: &str = "{prefix}: {msg}";

impl Bars {
    fn new() -> Bars {
        // The templates are constants, checked by a unit test.
        let style = |t| ProgressStyle::with_template(t).expect("valid progress template");
        Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stdout_with_hz(10)),
            bars: BTreeMap::new(),
            downloading: style(DOWNLOADING).progress_chars("=> "),
            status: style(STATUS),
        }
    }

    /// Shows `l`'s new state; `changed`: its phase differs from the last report's.
    fn update(&mut self, index: usize, l: &LayerState, changed: bool) {
        let bar = match self.bars.get(&index) {
            Some(bar) => bar.clone(),
            None => {
                // Layers report in any order; their bars stay in the manifest's.
                let position = self.bars.range(..index).count();
                let bar = self.multi.insert(
                    position,
                    ProgressBar::new(l.total).with_style(self.status.clone()),
                );
                bar.set_prefix(short(&l.layer).to_owned());
                self.bars.insert(index, bar.clone());
                bar
            }
        };
        if changed {
            let style = if l.phase == "downloading" {
                &self.downloading
            } else {
                &self.status
            };
            bar.set_style(style.clone());
            bar.set_message(phase_text(&l.phase).to_owned());
        }
        bar.set_length(l.total);
        bar.set_position(l.done);
        if matches!(l.phase.as_str(), "done" | "cached") {
            bar.finish();
        }
    }

    /// Leaves every bar as last drawn (a failed pull's too), before the result is printed.
    fn end(self) {
        for bar in self.bars.values() {
            if !bar.is_finished() {
                bar.abandon();
            }
        }
    }
}

/// The short form of a layer digest, as docker prints it.
fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

/// What docker says for a layer in each phase.
fn phase_text(phase: &str) -> &str {
    match phase {
        "cached" => "Already exists",
        "downloading" => "Downloading",
        "unpacking" => "Extracting",
        "done" => "Pull complete",
        other => other,
    }
}

/// A line for a non-terminal: one per layer and phase change.
pub fn plain_line(l: &LayerState) -> String {
    match l.phase.as_str() {
        "downloading" => format!("{}: Downloading {}", short(&l.layer), size(l.total)),
        "unpacking" => format!("{}: Download complete, extracting", short(&l.layer)),
        p => format!("{}: {}", short(&l.layer), phase_text(p)),
    }
}

/// Bytes in docker's units (powers of 1000).
pub fn size(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < units.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", units[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_and_sizes() {
        let l = LayerState {
            layer: "sha256:0123456789abcdef".into(),
            done: 2_500_000,
            total: 5_000_000,
            phase: "downloading".into(),
        };
        assert_eq!(plain_line(&l), "0123456789ab: Downloading 5.0MB");
        let unpacking = LayerState {
            phase: "unpacking".into(),
            ..l.clone()
        };
        assert_eq!(
            plain_line(&unpacking),
            "0123456789ab: Download complete, extracting"
        );
        let cached = LayerState {
            phase: "cached".into(),
            ..l
        };
        assert_eq!(plain_line(&cached), "0123456789ab: Already exists");
        assert_eq!(size(999), "999B");
        assert_eq!(size(1_234_567), "1.2MB");
    }

    #[test]
    fn bar_templates_parse() {
        assert!(ProgressStyle::with_template(DOWNLOADING).is_ok());
        assert!(ProgressStyle::with_template(STATUS).is_ok());
    }
}
