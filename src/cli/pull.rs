//! `skiff pull IMAGE`: pulls through skiffd, with a progress bar per layer on a terminal and
//! plain lines otherwise.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::Instant;

use hyper::Method;
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
    /// When the first byte was reported, and how many bytes had arrived then.
    pub started: Option<(Instant, u64)>,
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
    let mut drawn = 0usize;
    let mut last_draw: Option<Instant> = None;
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
            if entry.started.is_none() && line.phase == "downloading" {
                entry.started = Some((Instant::now(), line.done));
            }
            entry.layer = digest;
            entry.done = line.done;
            entry.total = line.total;
            entry.phase = line.phase.clone();
            if args.quiet {
                continue;
            }
            if tty {
                let due = last_draw.is_none_or(|t| t.elapsed().as_millis() >= 100);
                if changed || due {
                    drawn = redraw(&layers, drawn)?;
                    last_draw = Some(Instant::now());
                }
            } else if changed {
                out(&format!("{}\n", plain_line(entry)))?;
            }
        }
    }
    if tty && !layers.is_empty() {
        redraw(&layers, drawn)?;
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

/// Moves the cursor back over the previous drawing and writes one line per layer.
fn redraw(layers: &BTreeMap<usize, LayerState>, drawn: usize) -> Result<usize, Error> {
    let mut text = String::new();
    if drawn > 0 {
        text.push_str(&format!("\x1b[{drawn}A"));
    }
    for l in layers.values() {
        text.push_str("\r\x1b[2K");
        text.push_str(&bar_line(l, Instant::now()));
        text.push('\n');
    }
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(Error::Output)?;
    Ok(layers.len())
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

/// A progress bar line: `abcdef012345: Downloading [=====>     ] 1.2MB/5.0MB 3.4MB/s`.
pub fn bar_line(l: &LayerState, now: Instant) -> String {
    let name = short(&l.layer);
    if l.phase != "downloading" {
        return format!("{name}: {}", phase_text(&l.phase));
    }
    const WIDTH: usize = 30;
    let filled = if l.total > 0 {
        ((l.done.min(l.total) as u128 * WIDTH as u128) / l.total as u128) as usize
    } else {
        0
    };
    let mut bar = "=".repeat(filled);
    if filled < WIDTH {
        bar.push('>');
        bar.push_str(&" ".repeat(WIDTH - filled - 1));
    }
    let rate = match l.started {
        Some((t, base)) => {
            let secs = now.duration_since(t).as_secs_f64();
            if secs > 0.2 {
                format!(
                    " {}/s",
                    size(((l.done.saturating_sub(base)) as f64 / secs) as u64)
                )
            } else {
                String::new()
            }
        }
        None => String::new(),
    };
    format!(
        "{name}: Downloading [{bar}] {}/{}{rate}",
        size(l.done),
        size(l.total)
    )
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
    use std::time::Duration;

    use super::*;

    #[test]
    fn bar_and_plain_lines() {
        let start = Instant::now();
        let l = LayerState {
            layer: "sha256:0123456789abcdef".into(),
            done: 2_500_000,
            total: 5_000_000,
            phase: "downloading".into(),
            started: Some((start, 500_000)),
        };
        assert_eq!(
            bar_line(&l, start + Duration::from_secs(2)),
            "0123456789ab: Downloading [===============>              ] 2.5MB/5.0MB 1.0MB/s"
        );
        assert_eq!(plain_line(&l), "0123456789ab: Downloading 5.0MB");
        let done = LayerState {
            phase: "done".into(),
            ..l.clone()
        };
        assert_eq!(bar_line(&done, start), "0123456789ab: Pull complete");
        let cached = LayerState {
            phase: "cached".into(),
            ..l
        };
        assert_eq!(plain_line(&cached), "0123456789ab: Already exists");
        assert_eq!(size(999), "999B");
        assert_eq!(size(1_234_567), "1.2MB");
    }
}
