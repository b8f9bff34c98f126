//! Reading checkpoints: safetensors (any float dtype) and PyTorch pickles (through
//! `burn_store`'s reader), with strict bookkeeping of which tensors were used.
//!
//! Modules pull their parameters from a [`TensorStore`] by checkpoint key and expected shape.
//! Keys are open_clip's own names, so the rules are mostly "the same name"; the few
//! exceptions are applied where the tensor is taken and commented there:
//! - detectron2 CLIP-VIS checkpoints prefix every CLIP key with `backbone.clip_model.`
//!   ([`TensorStore::with_prefix`]);
//! - PyTorch `nn.Linear` weights are `[out, in]`; Burn multiplies `x · W` with `[in, out]`, so
//!   linear weights are transposed once at load time;
//! - BatchNorm layers are frozen, so their four tensors are folded into the preceding
//!   convolution at load time (`modified_resnet.rs`).

use crate::error::{ClipError, Result};
use burn::tensor::{backend::Backend, Tensor, TensorData};
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// `prefix.name`, or `name` when the prefix is empty: the key of a sub-module's tensor.
pub fn join_key(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// One tensor of a checkpoint, converted to `f32`.
#[derive(Debug, Clone)]
pub struct StoredTensor {
    /// Shape as stored (PyTorch order).
    pub shape: Vec<usize>,
    /// Row-major values.
    pub values: Vec<f32>,
}

/// Checkpoint keys that carry no parameter and are skipped by strict loading.
fn is_bookkeeping_key(key: &str) -> bool {
    key.ends_with("num_batches_tracked")
        // detectron2 CLIP-VIS checkpoints also save the loss's class-weight buffer.
        || key.starts_with("criterion.")
        // OpenAI's published state dicts carry these three scalars; open_clip deletes them.
        || matches!(key, "input_resolution" | "context_length" | "vocab_size")
}

/// One named f32 tensor as `(key, shape, row-major values)`: what stores hand out and
/// [`save_safetensors`] writes.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// All tensors of one checkpoint file, in `f32`, plus the file's string metadata.
///
/// A store can also be *synthetic* ([`TensorStore::synthetic`]): it then invents every tensor a
/// module asks for (seeded, scaled so activations stay O(1)) and records the requested keys and
/// shapes. That builds the built-in demo model and checks a preset's parameter names and
/// shapes against open_clip's listing without any weights file.
#[derive(Debug)]
pub struct TensorStore {
    file: PathBuf,
    tensors: HashMap<String, StoredTensor>,
    metadata: HashMap<String, String>,
    prefix: RefCell<String>,
    used: RefCell<BTreeSet<String>>,
    synthetic: Option<Synthetic>,
}

/// How a synthetic store fills the tensors it invents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyntheticFill {
    /// Zeros (fast; for shape bookkeeping).
    Zeros,
    /// Seeded random values shaped like trained weights.
    Random(u64),
}

#[derive(Debug)]
struct Synthetic {
    fill: SyntheticFill,
    requested: RefCell<Vec<(String, Vec<usize>)>>,
}

impl TensorStore {
    /// Reads a checkpoint: `.safetensors`, or a PyTorch file (`.bin`, `.pt`, `.pth`, zip or
    /// legacy pickle). A PyTorch file whose tensors sit under a `model` or `state_dict` entry
    /// (detectron2, training checkpoints) is read from that entry.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let file = path.as_ref().to_path_buf();
        let bytes = std::fs::read(&file).map_err(|source| ClipError::Io {
            file: file.clone(),
            source,
        })?;
        if looks_like_safetensors(&bytes) {
            Self::from_safetensors_bytes(&file, &bytes)
        } else {
            drop(bytes);
            Self::from_pytorch(&file)
        }
    }

    /// Builds a store from in-memory tensors (tests, conversions).
    pub fn from_tensors(
        file: impl Into<PathBuf>,
        tensors: HashMap<String, StoredTensor>,
        metadata: HashMap<String, String>,
    ) -> Self {
        Self {
            file: file.into(),
            tensors,
            metadata,
            prefix: RefCell::default(),
            used: RefCell::default(),
            synthetic: None,
        }
    }

    /// Reads a safetensors file already in memory (weights embedded in a binary); `name`
    /// stands for the file in messages.
    pub fn from_bytes(name: impl Into<PathBuf>, bytes: &[u8]) -> Result<Self> {
        Self::from_safetensors_bytes(&name.into(), bytes)
    }

    /// A store that invents every tensor asked of it (see the type's docs).
    pub fn synthetic(fill: SyntheticFill) -> Self {
        let mut store = Self::from_tensors("<synthetic>", HashMap::new(), HashMap::new());
        store.synthetic = Some(Synthetic {
            fill,
            requested: RefCell::default(),
        });
        store
    }

    /// The `(key, shape)` pairs a synthetic store was asked for, in request order.
    pub fn requested(&self) -> Vec<(String, Vec<usize>)> {
        self.synthetic
            .as_ref()
            .map(|s| s.requested.borrow().clone())
            .unwrap_or_default()
    }

    /// Writes every tensor a synthetic store handed out (see [`requested`](Self::requested))
    /// as a safetensors file with `metadata`: a model built from the store, saved as weights.
    pub fn save_requested(
        &self,
        path: &Path,
        dtype: SaveDtype,
        metadata: HashMap<String, String>,
    ) -> Result<()> {
        save_safetensors(path, &self.requested_tensors()?, dtype, metadata)
    }

    /// Every tensor a synthetic store handed out, as `(key, shape, values)` in request order:
    /// the invented weights made concrete (to save them, or to train on top of them).
    pub fn requested_tensors(&self) -> Result<Vec<NamedTensor>> {
        self.requested()
            .into_iter()
            .map(|(key, shape)| {
                let values = self.values(&key, &shape)?;
                Ok((key, shape, values))
            })
            .collect()
    }

    fn from_safetensors_bytes(file: &Path, bytes: &[u8]) -> Result<Self> {
        let format_error = |message: String| ClipError::Format {
            file: file.to_path_buf(),
            format: "safetensors",
            message,
        };
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| format_error(e.to_string()))?;
        let metadata = header.metadata().clone().unwrap_or_default();
        let view = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| format_error(e.to_string()))?;
        let mut tensors = HashMap::new();
        for (key, tensor) in view.iter() {
            let values = decode_safetensors(file, key, tensor.dtype(), tensor.data())?;
            tensors.insert(
                key.to_string(),
                StoredTensor {
                    shape: tensor.shape().to_vec(),
                    values,
                },
            );
        }
        Ok(Self::from_tensors(file, tensors, metadata))
    }

    fn from_pytorch(file: &Path) -> Result<Self> {
        use burn_store::pytorch::PytorchReader;
        let format_error = |message: String| ClipError::Format {
            file: file.to_path_buf(),
            format: "PyTorch",
            message,
        };
        let mut reader = PytorchReader::new(file).map_err(|e| format_error(e.to_string()))?;
        // Training frameworks nest the state dict under one entry.
        for nested in ["model", "state_dict"] {
            let inside = format!("{nested}.");
            if !reader.keys().is_empty() && reader.keys().iter().all(|k| k.starts_with(&inside)) {
                reader = PytorchReader::with_top_level_key(file, nested)
                    .map_err(|e| format_error(e.to_string()))?;
                break;
            }
        }
        let mut tensors = HashMap::new();
        for (key, snapshot) in reader.into_tensors() {
            let data = snapshot
                .to_data()
                .map_err(|e| format_error(format!("tensor `{key}`: {e:?}")))?;
            if !data.dtype.is_float() {
                if is_bookkeeping_key(&key) {
                    continue;
                }
                return Err(ClipError::UnsupportedDtype {
                    file: file.to_path_buf(),
                    key,
                    dtype: format!("{:?}", data.dtype),
                });
            }
            let shape = data.shape.to_vec();
            let values = data
                .convert::<f32>()
                .into_vec::<f32>()
                .map_err(|e| format_error(format!("tensor `{key}`: {e:?}")))?;
            tensors.insert(key, StoredTensor { shape, values });
        }
        Ok(Self::from_tensors(file, tensors, HashMap::new()))
    }

    /// Looks keys up under `prefix` (e.g. `backbone.clip_model.` in CLIP-VIS checkpoints).
    /// Strict loading then only checks keys under that prefix.
    pub fn with_prefix(self, prefix: impl Into<String>) -> Self {
        *self.prefix.borrow_mut() = prefix.into();
        self
    }

    /// Runs `load` with keys looked up under `prefix` (e.g. the CLIP towers inside a CLIP-VIS
    /// checkpoint), then restores the previous prefix. Used tensors stay marked, so a strict
    /// check afterwards covers the whole file.
    pub fn scoped<T>(&self, prefix: &str, load: impl FnOnce(&TensorStore) -> T) -> T {
        let previous = self.prefix.replace(prefix.to_string());
        let result = load(self);
        *self.prefix.borrow_mut() = previous;
        result
    }

    /// Replaces the string metadata (e.g. to supply a config for a file without one).
    pub fn with_metadata(mut self, metadata: HashMap<String, String>) -> Self {
        self.metadata = metadata;
        self
    }

    /// The file the tensors came from.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The safetensors string metadata (empty for PyTorch files).
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    /// Whether `key` (under the prefix) exists.
    pub fn contains(&self, key: &str) -> bool {
        self.tensors.contains_key(&self.full_key(key))
    }

    /// Shape of `key` (under the prefix), if present.
    pub fn shape(&self, key: &str) -> Option<&[usize]> {
        self.tensors
            .get(&self.full_key(key))
            .map(|t| t.shape.as_slice())
    }

    /// All keys (with their prefix), sorted.
    pub fn keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        keys.sort_unstable();
        keys
    }

    /// Raw access to a stored tensor by its full key.
    pub fn raw(&self, full_key: &str) -> Option<&StoredTensor> {
        self.tensors.get(full_key)
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix.borrow())
    }

    /// Takes `key` as stored, checking that its shape is `expected`, and marks it used.
    pub fn values(&self, key: &str, expected: &[usize]) -> Result<Vec<f32>> {
        let full = self.full_key(key);
        if let Some(synthetic) = &self.synthetic {
            synthetic
                .requested
                .borrow_mut()
                .push((full.clone(), expected.to_vec()));
            return Ok(synthesize(&full, expected, synthetic.fill));
        }
        let tensor = self
            .tensors
            .get(&full)
            .ok_or_else(|| ClipError::MissingTensor {
                file: self.file.clone(),
                key: full.clone(),
            })?;
        if tensor.shape != expected {
            return Err(ClipError::ShapeMismatch {
                file: self.file.clone(),
                key: full,
                expected: expected.to_vec(),
                found: tensor.shape.clone(),
            });
        }
        if tensor.values.iter().any(|v| !v.is_finite()) {
            return Err(ClipError::NonFinite {
                what: format!("{}: tensor `{full}`", self.file.display()),
            });
        }
        self.used.borrow_mut().insert(full);
        Ok(tensor.values.clone())
    }

    /// Takes `key` as a `D`-dimensional tensor of shape `expected`.
    pub fn tensor<B: Backend, const D: usize>(
        &self,
        key: &str,
        expected: [usize; D],
        device: &B::Device,
    ) -> Result<Tensor<B, D>> {
        let values = self.values(key, &expected)?;
        Ok(Tensor::from_data(TensorData::new(values, expected), device))
    }

    /// Takes a PyTorch `nn.Linear` weight stored `[d_output, d_input]` and returns it as Burn's
    /// `[d_input, d_output]`.
    pub fn linear_weight<B: Backend>(
        &self,
        key: &str,
        d_input: usize,
        d_output: usize,
        device: &B::Device,
    ) -> Result<Tensor<B, 2>> {
        Ok(self
            .tensor::<B, 2>(key, [d_output, d_input], device)?
            .transpose())
    }

    /// Every parameter under the prefix (bookkeeping entries skipped), with the prefix removed,
    /// sorted by key: what a conversion writes.
    pub fn parameters(&self) -> Vec<NamedTensor> {
        let prefix = self.prefix.borrow();
        let mut entries: Vec<_> = self
            .tensors
            .iter()
            .filter_map(|(key, tensor)| {
                let short = key.strip_prefix(prefix.as_str())?;
                (!is_bookkeeping_key(short)).then(|| {
                    (
                        short.to_string(),
                        tensor.shape.clone(),
                        tensor.values.clone(),
                    )
                })
            })
            .collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries
    }

    /// Strict loading: fails if a tensor under the prefix was never taken.
    pub fn ensure_all_used(&self) -> Result<()> {
        let prefix = self.prefix.borrow();
        let used = self.used.borrow();
        let mut left: Vec<&String> = self
            .tensors
            .keys()
            .filter(|k| k.starts_with(prefix.as_str()) && !used.contains(*k))
            .filter(|k| !is_bookkeeping_key(&k[prefix.len()..]))
            .collect();
        left.sort();
        match left.first() {
            None => Ok(()),
            Some(first) => Err(ClipError::UnexpectedTensors {
                file: self.file.clone(),
                count: left.len(),
                first: (*first).clone(),
            }),
        }
    }
}

fn looks_like_safetensors(bytes: &[u8]) -> bool {
    // 8-byte little-endian header length, then a JSON object.
    bytes.len() >= 9 && bytes[8] == b'{'
}

fn decode_safetensors(
    file: &Path,
    key: &str,
    dtype: safetensors::Dtype,
    bytes: &[u8],
) -> Result<Vec<f32>> {
    use safetensors::Dtype;
    let chunks = |width: usize| bytes.chunks_exact(width);
    Ok(match dtype {
        Dtype::F32 => chunks(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => chunks(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => chunks(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F64 => chunks(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
            .collect(),
        // Integer buffers (BatchNorm step counters, token ids and images in fixtures) are kept
        // as f32;
        // no parameter is an integer, so a model never takes them.
        Dtype::I64 => chunks(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
            .collect(),
        Dtype::I32 => chunks(4)
            .map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")) as f32)
            .collect(),
        Dtype::U8 => bytes.iter().map(|&b| f32::from(b)).collect(),
        other => {
            return Err(ClipError::UnsupportedDtype {
                file: file.to_path_buf(),
                key: key.to_string(),
                dtype: format!("{other:?}"),
            })
        }
    })
}

/// Values for a synthetic tensor named `key`: norms and scales near 1, BatchNorm variances
/// positive, `logit_scale = ln 100`, biases small, other weights `U(-1, 1) / sqrt(fan_in)`.
fn synthesize(key: &str, shape: &[usize], fill: SyntheticFill) -> Vec<f32> {
    let count: usize = shape.iter().product();
    let SyntheticFill::Random(seed) = fill else {
        return vec![0.0; count];
    };
    // SplitMix64 seeded by the key, so each tensor is independent of request order.
    let mut state = key.bytes().fold(seed ^ 0x9E37_79B9_7F4A_7C15, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3)
    });
    let mut uniform = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    if key.ends_with("logit_scale") {
        return vec![100f32.ln(); count];
    }
    if key.ends_with("running_var") {
        return (0..count).map(|_| 1.0 + 0.5 * uniform()).collect();
    }
    // Every 1-D `weight` in these towers is a LayerNorm/BatchNorm scale.
    if key.ends_with("gamma") || (key.ends_with("weight") && shape.len() == 1) {
        return (0..count).map(|_| 1.0 + 0.2 * uniform()).collect();
    }
    if shape.len() <= 1 {
        return (0..count).map(|_| 0.1 * uniform()).collect();
    }
    let fan_in: usize = if key.ends_with("embedding") || key.ends_with("embedding.weight") {
        shape[1]
    } else {
        shape[1..].iter().product()
    };
    let scale = (3.0 / fan_in.max(1) as f32).sqrt();
    (0..count).map(|_| scale * uniform()).collect()
}

/// The dual of [`TensorStore`]: modules write their parameters under checkpoint keys, in the
/// checkpoint's layout (PyTorch order: linear weights `[out, in]`), so that a saved file loads
/// back through the same `load` constructors. Trained decoders are saved this way.
#[derive(Debug, Default, Clone)]
pub struct TensorSink {
    tensors: std::collections::BTreeMap<String, StoredTensor>,
}

impl TensorSink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes `values` of `shape` under `key` (row-major). A key written twice is a bug in a
    /// `save` method, not an input error.
    pub fn put_values(&mut self, key: impl Into<String>, shape: Vec<usize>, values: Vec<f32>) {
        let key = key.into();
        assert_eq!(
            shape.iter().product::<usize>(),
            values.len(),
            "tensor `{key}`: shape and value count disagree"
        );
        let previous = self
            .tensors
            .insert(key.clone(), StoredTensor { shape, values });
        assert!(previous.is_none(), "tensor `{key}` saved twice");
    }

    /// Writes `tensor` under `key` (one copy to the host).
    pub fn put<B: Backend, const D: usize>(
        &mut self,
        key: impl Into<String>,
        tensor: Tensor<B, D>,
    ) {
        let shape = tensor.dims().to_vec();
        let values = tensor
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("float tensor");
        self.put_values(key, shape, values);
    }

    /// Copies every parameter of `store` (under its current prefix) with `prefix` prepended:
    /// the frozen CLIP towers are saved as they were read, BatchNorms unfolded.
    pub fn put_store(&mut self, store: &TensorStore, prefix: &str) -> Result<()> {
        let entries = if store.synthetic.is_some() {
            store.requested_tensors()?
        } else {
            store.parameters()
        };
        for (key, shape, values) in entries {
            self.put_values(format!("{prefix}{key}"), shape, values);
        }
        Ok(())
    }

    /// Number of tensors written.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The tensors written, by key.
    pub fn tensors(&self) -> &std::collections::BTreeMap<String, StoredTensor> {
        &self.tensors
    }

    /// The tensors as `(key, shape, values)`, sorted by key.
    pub fn into_entries(self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        self.tensors
            .into_iter()
            .map(|(k, t)| (k, t.shape, t.values))
            .collect()
    }

    /// The tensors as a store named `file` (to load a model from what was saved).
    pub fn into_store(
        self,
        file: impl Into<PathBuf>,
        metadata: HashMap<String, String>,
    ) -> TensorStore {
        TensorStore::from_tensors(file, self.tensors.into_iter().collect(), metadata)
    }

    /// Writes the tensors as one safetensors file, atomically ([`save_safetensors`]).
    pub fn save(
        &self,
        path: &Path,
        dtype: SaveDtype,
        metadata: HashMap<String, String>,
    ) -> Result<()> {
        let entries: Vec<_> = self
            .tensors
            .iter()
            .map(|(k, t)| (k.clone(), t.shape.clone(), t.values.clone()))
            .collect();
        save_safetensors(path, &entries, dtype, metadata)
    }
}

/// Storage precision of a written weights file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveDtype {
    /// 32-bit floats (exact).
    F32,
    /// 16-bit floats (half the size; values round to f16).
    F16,
}

/// Writes `tensors` (key, shape, values) and string `metadata` as one safetensors file,
/// atomically: the bytes go to a temporary file beside `path`, which is then renamed, so an
/// interrupted write never leaves a truncated file under the final name.
pub fn save_safetensors(
    path: &Path,
    tensors: &[NamedTensor],
    dtype: SaveDtype,
    metadata: HashMap<String, String>,
) -> Result<()> {
    let io_error = |source| ClipError::Io {
        file: path.to_path_buf(),
        source,
    };
    let buffers: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, values)| match dtype {
            SaveDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            SaveDtype::F16 => values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
        })
        .collect();
    let st_dtype = match dtype {
        SaveDtype::F32 => safetensors::Dtype::F32,
        SaveDtype::F16 => safetensors::Dtype::F16,
    };
    let views = tensors
        .iter()
        .zip(&buffers)
        .map(|((key, shape, _), bytes)| {
            safetensors::tensor::TensorView::new(st_dtype, shape.clone(), bytes)
                .map(|view| (key.clone(), view))
                .map_err(|e| ClipError::Format {
                    file: path.to_path_buf(),
                    format: "safetensors",
                    message: format!("tensor `{key}`: {e}"),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, Some(metadata)).map_err(|e| ClipError::Format {
        file: path.to_path_buf(),
        format: "safetensors",
        message: e.to_string(),
    })?;
    write_atomically(path, &bytes).map_err(io_error)
}

/// Writes `bytes` to a temporary sibling of `path`, syncs it, and renames it over `path`.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    let temporary = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}
