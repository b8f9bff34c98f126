//! YTVIS / LV-VIS results: the json the evaluators read (SPEC §6.6) and the zip the
//! CodaLab/Codabench servers take.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::io_error;
use super::{FinishedVideo, Track};
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

/// A temporary sibling of `path` (renamed over it when complete).
fn temporary(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Writes a results json list record by record, straight from [`FinishedVideo`]s' mask files,
/// so a long video's (or a whole split's) results are never all in memory. The file appears
/// under its name only when [`finish`](Self::finish) succeeds.
#[derive(Debug)]
pub struct ResultsWriter {
    path: PathBuf,
    temporary: PathBuf,
    out: BufWriter<File>,
    records: usize,
    finished: bool,
}

impl ResultsWriter {
    /// Starts `path`.
    pub fn create(path: &Path) -> Result<Self> {
        let temporary = temporary(path);
        let file = File::create(&temporary).map_err(io_error(&temporary))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(b"[").map_err(io_error(&temporary))?;
        Ok(Self {
            path: path.to_path_buf(),
            temporary,
            out,
            records: 0,
            finished: false,
        })
    }

    /// Appends one video's tracks as records (best first).
    pub fn write_video(&mut self, video_id: u64, video: &mut FinishedVideo) -> Result<()> {
        let err = |e: serde_json::Error| Error::Io {
            file: self.temporary.clone(),
            source: e.into(),
        };
        for k in 0..video.tracks.len() {
            let mut head = Vec::new();
            if self.records > 0 {
                head.push(b',');
            }
            let track = &video.tracks[k];
            head.extend_from_slice(b"{\"video_id\":");
            serde_json::to_writer(&mut head, &video_id).map_err(err)?;
            head.extend_from_slice(b",\"score\":");
            serde_json::to_writer(&mut head, &track.score).map_err(err)?;
            head.extend_from_slice(b",\"category_id\":");
            serde_json::to_writer(&mut head, &track.category_id).map_err(err)?;
            head.extend_from_slice(b",\"segmentations\":[");
            self.out
                .write_all(&head)
                .map_err(io_error(&self.temporary))?;
            for f in 0..video.frames {
                if f > 0 {
                    self.out
                        .write_all(b",")
                        .map_err(io_error(&self.temporary))?;
                }
                let rle = RleJson {
                    size: [video.size.0, video.size.1],
                    counts: video.mask_string(k, f)?,
                };
                serde_json::to_writer(&mut self.out, &rle).map_err(err)?;
            }
            self.out
                .write_all(b"]}")
                .map_err(io_error(&self.temporary))?;
            self.records += 1;
        }
        Ok(())
    }

    /// Records written so far.
    pub fn records(&self) -> usize {
        self.records
    }

    /// Closes the list, syncs, and renames the file into place.
    pub fn finish(mut self) -> Result<PathBuf> {
        self.out
            .write_all(b"]")
            .map_err(io_error(&self.temporary))?;
        self.out.flush().map_err(io_error(&self.temporary))?;
        self.out
            .get_ref()
            .sync_all()
            .map_err(io_error(&self.temporary))?;
        std::fs::rename(&self.temporary, &self.path).map_err(io_error(&self.path))?;
        self.finished = true;
        Ok(self.path.clone())
    }
}

impl Drop for ResultsWriter {
    fn drop(&mut self) {
        // An unfinished list (an error part-way) never replaces an earlier results.json.
        if !self.finished {
            let _ = std::fs::remove_file(&self.temporary);
        }
    }
}

/// Writes `records` (in memory) as a json list to `path`, through a temporary file.
pub fn write_json(path: &Path, records: &[ResultRecord]) -> Result<()> {
    let json =
        serde_json::to_vec(records).map_err(|e| Error::Internal(format!("results json: {e}")))?;
    clip_vis_clip::weights::write_atomically(path, &json).map_err(io_error(path))
}

/// Zips the file `source` as `name` into `zip` (deflate, streamed in constant memory), the
/// upload format of the LV-VIS and YouTube-VIS evaluation servers (`results.json` inside).
///
/// Layout (PKWARE APPNOTE): local header, data, central directory, end record; the local
/// header's CRC and sizes are filled in after the data is streamed. No ZIP64: up to 4 GiB.
pub fn write_zip(source: &Path, name: &str, zip: &Path) -> Result<()> {
    let input = File::open(source).map_err(io_error(source))?;
    let temporary = temporary(zip);
    let mut file = File::create(&temporary).map_err(io_error(&temporary))?;
    let header = |crc: u32, compressed: u32, size: u32| {
        let mut h = Vec::with_capacity(30 + name.len());
        h.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        h.extend_from_slice(&20u16.to_le_bytes()); // version needed: 2.0
        h.extend_from_slice(&0u16.to_le_bytes()); // flags
        h.extend_from_slice(&8u16.to_le_bytes()); // deflate
        h.extend_from_slice(&0u16.to_le_bytes()); // time
        h.extend_from_slice(&0x21u16.to_le_bytes()); // date: 1980-01-01
        h.extend_from_slice(&crc.to_le_bytes());
        h.extend_from_slice(&compressed.to_le_bytes());
        h.extend_from_slice(&size.to_le_bytes());
        h.extend_from_slice(&(name.len() as u16).to_le_bytes());
        h.extend_from_slice(&0u16.to_le_bytes()); // extra length
        h.extend_from_slice(name.as_bytes());
        h
    };
    let placeholder = header(0, 0, 0);
    file.write_all(&placeholder).map_err(io_error(&temporary))?;
    let mut hasher = crc32fast::Hasher::new();
    let mut size: u64 = 0;
    let mut encoder =
        flate2::write::DeflateEncoder::new(BufWriter::new(&file), flate2::Compression::new(6));
    let mut reader = std::io::BufReader::with_capacity(1 << 20, input);
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buffer).map_err(io_error(source))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        size += n as u64;
        encoder
            .write_all(&buffer[..n])
            .map_err(io_error(&temporary))?;
    }
    let mut writer = encoder.finish().map_err(io_error(&temporary))?;
    writer.flush().map_err(io_error(&temporary))?;
    drop(writer);
    let end = file.stream_position().map_err(io_error(&temporary))?;
    let compressed = end - placeholder.len() as u64;
    if size > u64::from(u32::MAX) || end > u64::from(u32::MAX) {
        let _ = std::fs::remove_file(&temporary);
        return Err(Error::Usage(format!(
            "{}: over 4 GiB, too large for a plain zip",
            source.display()
        )));
    }
    let crc = hasher.finalize();
    let local = header(crc, compressed as u32, size as u32);
    let mut central = Vec::new();
    central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
    central.extend_from_slice(&20u16.to_le_bytes()); // made by
    central.extend_from_slice(&local[4..30]); // same fields as the local header
    central.extend_from_slice(&0u16.to_le_bytes()); // comment length
    central.extend_from_slice(&0u16.to_le_bytes()); // disk
    central.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
    central.extend_from_slice(&0u32.to_le_bytes()); // external attributes
    central.extend_from_slice(&0u32.to_le_bytes()); // local header offset
    central.extend_from_slice(name.as_bytes());
    let mut tail = central.clone();
    tail.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    tail.extend_from_slice(&[0u8; 4]); // disk numbers
    tail.extend_from_slice(&1u16.to_le_bytes());
    tail.extend_from_slice(&1u16.to_le_bytes());
    tail.extend_from_slice(&(central.len() as u32).to_le_bytes());
    tail.extend_from_slice(&(end as u32).to_le_bytes());
    tail.extend_from_slice(&0u16.to_le_bytes());
    file.write_all(&tail).map_err(io_error(&temporary))?;
    file.seek(SeekFrom::Start(0))
        .map_err(io_error(&temporary))?;
    file.write_all(&local).map_err(io_error(&temporary))?;
    file.sync_all().map_err(io_error(&temporary))?;
    drop(file);
    std::fs::rename(&temporary, zip).map_err(io_error(zip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zip_holds_the_deflated_file() {
        let dir = std::env::temp_dir().join(format!("clip-vis-zip-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let data = b"[{\"video_id\": 1}]".repeat(2000);
        std::fs::write(dir.join("results.json"), &data).unwrap();
        write_zip(
            &dir.join("results.json"),
            "results.json",
            &dir.join("results.zip"),
        )
        .unwrap();
        let zip = std::fs::read(dir.join("results.zip")).unwrap();
        assert_eq!(&zip[..4], b"PK\x03\x04");
        assert_eq!(
            u32::from_le_bytes(zip[14..18].try_into().unwrap()),
            crc32fast::hash(&data)
        );
        let start = 30 + "results.json".len();
        let size = u32::from_le_bytes(zip[18..22].try_into().unwrap()) as usize;
        let mut inflated = Vec::new();
        flate2::read::DeflateDecoder::new(&zip[start..start + size])
            .read_to_end(&mut inflated)
            .unwrap();
        assert_eq!(inflated, data);
        assert_eq!(&zip[zip.len() - 22..zip.len() - 18], b"PK\x05\x06");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
