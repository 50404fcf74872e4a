//! `primiad inspect`: what the image loader makes of one file.
//!
//! Prints the format, the DICOM transfer syntax, the original rows, columns
//! and samples per pixel, and the minimum, maximum and mean of the decoded
//! values of the first frame before any resizing or normalisation; for a
//! file with Rescale Slope / Intercept also the same after the modality LUT
//! (`rescaled_*`). With `--json` one JSON document whose field names follow
//! the shared corpus' `EXPECTED.json`; an unusable file gives a document
//! with an `error` field. Exit code 0 when the file decodes, 1 when not.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use primia_model::imaging::{self, DecodedImage};
use serde_json::{Map, Value, json};

/// Arguments of `primiad inspect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image file (DICOM, PNG or JPEG; recognised by content).
    pub file: PathBuf,
    /// Print one JSON document on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match imaging::decode_file(&args.file) {
        Ok(image) => {
            let report = report(&args.file, &image);
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).context("encoding the report")?
                );
            } else {
                print_text(&report);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(err) if args.json => {
            let doc = json!({
                "file": args.file.display().to_string(),
                "error": err.reason(),
            });
            println!(
                "{}",
                serde_json::to_string_pretty(&doc).context("encoding the report")?
            );
            Ok(ExitCode::FAILURE)
        }
        Err(err) => Err(err.into()),
    }
}

/// The report as a JSON object (serde_json sorts its keys); the text form
/// prints the same fields in [`TEXT_ORDER`].
fn report(file: &std::path::Path, image: &DecodedImage) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("file".into(), json!(file.display().to_string()));
    m.insert("format".into(), json!(image.format.name()));
    if let Some(ts) = &image.transfer_syntax {
        m.insert("ts".into(), json!(ts.uid));
        m.insert("ts_name".into(), json!(ts.name));
    }
    m.insert("rows".into(), json!(image.rows));
    m.insert("columns".into(), json!(image.columns));
    m.insert("samples_per_pixel".into(), json!(image.samples_per_pixel));
    m.insert("photometric".into(), json!(image.photometric));
    m.insert("bits_allocated".into(), json!(image.bits_allocated));
    m.insert("bits_stored".into(), json!(image.bits_stored));
    m.insert("signed".into(), json!(image.signed));
    m.insert("number_of_frames".into(), json!(image.number_of_frames));
    let stats = image.stats();
    m.insert("min".into(), json!(stats.min));
    m.insert("max".into(), json!(stats.max));
    m.insert("mean".into(), json!(stats.mean));
    if let (Some(rescale), Some(r)) = (image.rescale, image.rescaled_stats()) {
        m.insert(
            "rescale".into(),
            json!({ "slope": rescale.slope, "intercept": rescale.intercept }),
        );
        m.insert("rescaled_min".into(), json!(r.min));
        m.insert("rescaled_max".into(), json!(r.max));
        m.insert("rescaled_mean".into(), json!(r.mean));
    }
    if let Some(w) = image.window {
        m.insert(
            "window".into(),
            json!({ "center": w.center, "width": w.width, "function": format!("{:?}", w.function) }),
        );
    }
    m
}

/// The order of the text form: what the file is, then its geometry, then
/// the value statistics.
const TEXT_ORDER: &[&str] = &[
    "file",
    "format",
    "ts",
    "ts_name",
    "rows",
    "columns",
    "samples_per_pixel",
    "photometric",
    "bits_allocated",
    "bits_stored",
    "signed",
    "number_of_frames",
    "min",
    "max",
    "mean",
    "rescale",
    "rescaled_min",
    "rescaled_max",
    "rescaled_mean",
    "window",
];

fn print_text(report: &Map<String, Value>) {
    for key in TEXT_ORDER {
        match report.get(*key) {
            Some(Value::String(s)) => println!("{key:<18} {s}"),
            Some(other) => println!("{key:<18} {other}"),
            None => {}
        }
    }
}
