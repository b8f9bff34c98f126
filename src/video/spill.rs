//! Per-frame records on disk, so a session's memory stays flat in video length.
//!
//! The final selection needs, for every frame, each track's class probabilities (to prune
//! frames of the chosen (track, class) pairs) and its output mask; neither can be reduced
//! before the last frame decides which pairs win. They go to an unlinked-on-drop temporary
//! file, one record per frame, and are read back once in [`Spill::frames`].

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use hotcoco::Rle;

use super::{io_error, scratch_path};
use crate::{Error, Result};

/// One frame's record: per track, class probabilities `[Q, C]` and the output mask.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameRecord {
    /// Row-major `[queries, classes]` probabilities, in track order.
    pub probabilities: Vec<f32>,
    /// Per track, its mask at the original frame size.
    pub masks: Vec<Rle>,
}

/// An append-only file of [`FrameRecord`]s, removed when dropped.
#[derive(Debug)]
pub struct Spill {
    path: PathBuf,
    writer: BufWriter<File>,
    frames: usize,
}

impl Spill {
    /// A new spill file in `dir` (the system temporary directory when `None`).
    pub fn create(dir: Option<PathBuf>) -> Result<Self> {
        let path = scratch_path(dir, "spill", ".bin");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_error(&path))?;
        Ok(Self {
            writer: BufWriter::with_capacity(1 << 20, file),
            path,
            frames: 0,
        })
    }

    /// Appends one frame.
    pub fn push(&mut self, record: &FrameRecord) -> Result<()> {
        let mut bytes = Vec::with_capacity(16 + record.probabilities.len() * 4);
        bytes.extend_from_slice(&(record.probabilities.len() as u64).to_le_bytes());
        for p in &record.probabilities {
            bytes.extend_from_slice(&p.to_le_bytes());
        }
        bytes.extend_from_slice(&(record.masks.len() as u64).to_le_bytes());
        for rle in &record.masks {
            bytes.extend_from_slice(&rle.h.to_le_bytes());
            bytes.extend_from_slice(&rle.w.to_le_bytes());
            bytes.extend_from_slice(&(rle.counts.len() as u32).to_le_bytes());
            for c in &rle.counts {
                bytes.extend_from_slice(&c.to_le_bytes());
            }
        }
        self.writer
            .write_all(&bytes)
            .map_err(io_error(&self.path))?;
        self.frames += 1;
        Ok(())
    }

    /// Frames stored.
    pub fn len(&self) -> usize {
        self.frames
    }

    /// Whether no frame is stored.
    pub fn is_empty(&self) -> bool {
        self.frames == 0
    }

    /// Reads every record back in order, handing each to `visit` (with its frame index).
    pub fn frames(
        &mut self,
        mut visit: impl FnMut(usize, FrameRecord) -> Result<()>,
    ) -> Result<()> {
        self.writer.flush().map_err(io_error(&self.path))?;
        let mut file = self
            .writer
            .get_ref()
            .try_clone()
            .map_err(io_error(&self.path))?;
        file.seek(SeekFrom::Start(0))
            .map_err(io_error(&self.path))?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let path = self.path.clone();
        let u32_at = |reader: &mut BufReader<File>| -> Result<u32> {
            let mut b = [0u8; 4];
            reader.read_exact(&mut b).map_err(io_error(&path))?;
            Ok(u32::from_le_bytes(b))
        };
        for frame in 0..self.frames {
            let mut b8 = [0u8; 8];
            reader.read_exact(&mut b8).map_err(io_error(&self.path))?;
            let n = u64::from_le_bytes(b8) as usize;
            let mut raw = vec![0u8; n * 4];
            reader.read_exact(&mut raw).map_err(io_error(&self.path))?;
            let probabilities = raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                .collect();
            reader.read_exact(&mut b8).map_err(io_error(&self.path))?;
            let tracks = u64::from_le_bytes(b8) as usize;
            let mut masks = Vec::with_capacity(tracks);
            for _ in 0..tracks {
                let h = u32_at(&mut reader)?;
                let w = u32_at(&mut reader)?;
                let len = u32_at(&mut reader)? as usize;
                let mut raw = vec![0u8; len * 4];
                reader.read_exact(&mut raw).map_err(io_error(&self.path))?;
                let counts = raw
                    .chunks_exact(4)
                    .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
                    .collect();
                masks.push(Rle { h, w, counts });
            }
            visit(
                frame,
                FrameRecord {
                    probabilities,
                    masks,
                },
            )?;
        }
        // Further pushes append after the records read.
        self.writer
            .seek(SeekFrom::End(0))
            .map_err(io_error(&self.path))?;
        Ok(())
    }
}

impl Drop for Spill {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_the_file_is_removed() {
        let mut spill = Spill::create(None).unwrap();
        let path = spill.path.clone();
        let records: Vec<FrameRecord> = (0..3)
            .map(|f| FrameRecord {
                probabilities: vec![f as f32, 0.5, 0.25],
                masks: vec![Rle {
                    h: 2,
                    w: 2,
                    counts: vec![f, 4 - f],
                }],
            })
            .collect();
        for r in &records {
            spill.push(r).unwrap();
        }
        let mut back = Vec::new();
        spill
            .frames(|_, r| {
                back.push(r);
                Ok(())
            })
            .unwrap();
        assert_eq!(back, records);
        assert!(path.exists());
        drop(spill);
        assert!(!path.exists());
    }
}

/// The selected tracks' masks, one pycocotools RLE string per (track, frame), written frame by
/// frame during the final pass and read back per track (for the json) or per frame (for the
/// pictures). Only the index (12 bytes per mask) stays in memory. Removed when dropped.
#[derive(Debug)]
pub struct MaskSpill {
    path: PathBuf,
    file: File,
    writer_pos: u64,
    tracks: usize,
    /// `(offset, length)` of mask `[frame * tracks + track]`.
    index: Vec<(u64, u32)>,
}

impl MaskSpill {
    /// A new mask file for `tracks` tracks in `dir` (the system temporary directory when `None`).
    pub fn create(dir: Option<PathBuf>, tracks: usize) -> Result<Self> {
        let path = scratch_path(dir, "masks", ".bin");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_error(&path))?;
        Ok(Self {
            path,
            file,
            writer_pos: 0,
            tracks,
            index: Vec::new(),
        })
    }

    /// Appends one frame: the RLE string of every track, in track order.
    pub fn push_frame(&mut self, strings: &[String]) -> Result<()> {
        if strings.len() != self.tracks {
            return Err(Error::Internal(format!(
                "{}: a frame of {} masks for {} tracks",
                self.path.display(),
                strings.len(),
                self.tracks
            )));
        }
        self.file
            .seek(SeekFrom::Start(self.writer_pos))
            .map_err(io_error(&self.path))?;
        let mut writer = BufWriter::new(&self.file);
        for s in strings {
            writer
                .write_all(s.as_bytes())
                .map_err(io_error(&self.path))?;
            self.index.push((self.writer_pos, s.len() as u32));
            self.writer_pos += s.len() as u64;
        }
        writer.flush().map_err(io_error(&self.path))?;
        Ok(())
    }

    /// Frames stored.
    pub fn frames(&self) -> usize {
        self.index.len() / self.tracks.max(1)
    }

    /// The RLE string of `track` at `frame`.
    /// A track or frame past the end is [`Error::OutOfRange`].
    pub fn get(&mut self, track: usize, frame: usize) -> Result<String> {
        if track >= self.tracks {
            return Err(Error::OutOfRange {
                what: "track",
                index: track,
                count: self.tracks,
            });
        }
        let &(offset, len) =
            self.index
                .get(frame * self.tracks + track)
                .ok_or(Error::OutOfRange {
                    what: "frame",
                    index: frame,
                    count: self.frames(),
                })?;
        self.file
            .seek(SeekFrom::Start(offset))
            .map_err(io_error(&self.path))?;
        let mut bytes = vec![0u8; len as usize];
        self.file
            .read_exact(&mut bytes)
            .map_err(io_error(&self.path))?;
        String::from_utf8(bytes).map_err(|e| Error::Io {
            file: self.path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })
    }
}

impl Drop for MaskSpill {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
