//! `skiff images`: lists skiffd's image store like `docker images`.

use jiff::Timestamp;

use super::client::Client;
use super::print::images::{ImageSummary, images_table};
use super::{Error, out};

/// Path of the image collection.
pub const IMAGES_PATH: &str = "/apis/skiff.dev/v1/images";

/// Arguments of `skiff images` and `skiff image ls`.
#[derive(Debug, Clone, clap::Args)]
pub struct ImagesArgs {
    /// Only print image IDs, one per image.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

/// Runs `skiff images`.
pub async fn run(client: &Client, args: ImagesArgs) -> Result<u8, Error> {
    let images: Vec<ImageSummary> = client.get_json(IMAGES_PATH).await?;
    if args.quiet {
        let mut text = String::new();
        for image in &images {
            text.push_str(image.short_id());
            text.push('\n');
        }
        out(&text)?;
    } else {
        out(&images_table(&images, Timestamp::now()))?;
    }
    Ok(0)
}
