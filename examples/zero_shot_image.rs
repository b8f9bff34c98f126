//! Zero-shot classification of one image with published CLIP weights.
//!
//! ```text
//! cargo run --release --example zero_shot_image -- <weights> <image> "cat,dog,hard drive"
//! ```
//! `<weights>` is an open_clip checkpoint as published (`open_clip_pytorch_model.bin`) or a
//! `weights-convert` output. Prints one line per label, most probable first:
//! ```text
//!   0.9712  cat
//!   0.0251  dog
//!   0.0037  hard drive
//! ```

use clip_vis::backend::Default as Backend;
use clip_vis::clip::zero_shot::{Templates, TextClassifier};
use clip_vis::clip::Clip;

fn main() -> Result<(), clip_vis::Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [weights, image, labels] = args.as_slice() else {
        eprintln!("usage: zero_shot_image <weights> <image> <comma-separated labels>");
        std::process::exit(2);
    };
    let labels: Vec<&str> = labels.split(',').map(str::trim).collect();
    let device = Default::default();
    let clip = Clip::<Backend>::from_file(weights, None, &device)?;
    let classifier = TextClassifier::new(&clip, &labels, Templates::Vild)?;
    let result = clip_vis::zero_shot_image(&clip, &classifier, image)?;
    let mut order: Vec<usize> = (0..labels.len()).collect();
    order.sort_by(|&a, &b| result.probs[b].total_cmp(&result.probs[a]));
    for i in order {
        println!("{:>9.4}  {}", result.probs[i], labels[i]);
    }
    Ok(())
}
