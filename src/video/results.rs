//! YTVIS / LV-VIS results: the json the evaluators read (SPEC §6.6) and the zip the
//! CodaLab/Codabench servers take.

use std::io::Write;
use std::path::Path;

use serde::Serialize;

use super::Track;
use crate::{Error, Result};

/// One COCO RLE with string counts, as pycocotools writes it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RleJson {
    /// `[height, width]`.
    pub size: [u32; 2],
    /// pycocotools' compressed string of the run lengths.
    pub counts: String,
}

/// One detection record: a track of one video with one category.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ResultRecord {
    /// The dataset's video id.
    pub video_id: u64,
    /// The final score.
    pub score: f32,
    /// The category id (1-based position in the vocabulary, or the dataset's id).
    pub category_id: u64,
    /// One mask per frame.
    pub segmentations: Vec<RleJson>,
}

/// The records of one video's tracks.
pub fn records(video_id: u64, tracks: &[Track]) -> Vec<ResultRecord> {
    tracks
        .iter()
        .map(|track| ResultRecord {
            video_id,
            score: track.score,
            category_id: track.category_id,
            segmentations: track
                .masks
                .iter()
                .map(|rle| RleJson {
                    size: [rle.h, rle.w],
                    counts: hotcoco::mask::rle_to_string(rle),
                })
                .collect(),
        })
        .collect()
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    clip_vis_clip::weights::write_atomically(path, bytes).map_err(|source| Error::Io {
        file: path.to_path_buf(),
        source,
    })
}

/// Writes `records` as a json list to `path` (through a temporary file and a rename).
pub fn write_json(path: &Path, records: &[ResultRecord]) -> Result<()> {
    let json = serde_json::to_vec(records).map_err(|e| Error::Usage(e.to_string()))?;
    write(path, &json)
}

/// Writes `records` as `results.json` inside the zip archive `path`, the upload format of the
/// LV-VIS and YouTube-VIS evaluation servers (deflate-compressed).
pub fn write_zip(path: &Path, records: &[ResultRecord]) -> Result<()> {
    let json = serde_json::to_vec(records).map_err(|e| Error::Usage(e.to_string()))?;
    write(path, &zip_single_file("results.json", &json))
}

/// A zip archive holding one deflated file (PKWARE APPNOTE: local header, data, central
/// directory, end record; ZIP64 is not needed below 4 GiB).
pub fn zip_single_file(name: &str, data: &[u8]) -> Vec<u8> {
    let compressed = miniz_oxide::deflate::compress_to_vec(data, 6);
    let crc = crc32fast::hash(data);
    let mut out = Vec::with_capacity(compressed.len() + 128);
    let name = name.as_bytes();
    let common = |out: &mut Vec<u8>| {
        out.write_all(&20u16.to_le_bytes()).unwrap(); // version needed: 2.0
        out.write_all(&0u16.to_le_bytes()).unwrap(); // flags
        out.write_all(&8u16.to_le_bytes()).unwrap(); // deflate
        out.write_all(&0u16.to_le_bytes()).unwrap(); // time
        out.write_all(&0x21u16.to_le_bytes()).unwrap(); // date: 1980-01-01
        out.write_all(&crc.to_le_bytes()).unwrap();
        out.write_all(&(compressed.len() as u32).to_le_bytes())
            .unwrap();
        out.write_all(&(data.len() as u32).to_le_bytes()).unwrap();
        out.write_all(&(name.len() as u16).to_le_bytes()).unwrap();
        out.write_all(&0u16.to_le_bytes()).unwrap(); // extra length
    };
    out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
    common(&mut out);
    out.extend_from_slice(name);
    out.extend_from_slice(&compressed);
    let central = out.len();
    out.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
    out.extend_from_slice(&20u16.to_le_bytes()); // made by
    common(&mut out);
    out.extend_from_slice(&0u16.to_le_bytes()); // comment length
    out.extend_from_slice(&0u16.to_le_bytes()); // disk
    out.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
    out.extend_from_slice(&0u32.to_le_bytes()); // external attributes
    out.extend_from_slice(&0u32.to_le_bytes()); // local header offset
    out.extend_from_slice(name);
    let central_size = out.len() - central;
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0u8; 4]); // disk numbers
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&(central_size as u32).to_le_bytes());
    out.extend_from_slice(&(central as u32).to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zip_holds_the_deflated_file() {
        let data = b"[{\"video_id\": 1}]".repeat(20);
        let zip = zip_single_file("results.json", &data);
        assert_eq!(&zip[..4], b"PK\x03\x04");
        let start = 30 + "results.json".len();
        let size = u32::from_le_bytes(zip[18..22].try_into().unwrap()) as usize;
        let inflated = miniz_oxide::inflate::decompress_to_vec(&zip[start..start + size]).unwrap();
        assert_eq!(inflated, data);
        assert_eq!(&zip[zip.len() - 22..zip.len() - 18], b"PK\x05\x06");
    }
}
