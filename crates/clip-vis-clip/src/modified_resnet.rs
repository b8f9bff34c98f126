//! OpenAI's ModifiedResNet image tower (the `RN50` backbone of CLIP-VIS).
//!
//! Port of `mlfoundations/open_clip:src/open_clip/modified_resnet.py` @v2.24.0: a 3-convolution
//! stem, bottleneck stages whose strided blocks downsample with an average pool (anti-aliasing)
//! instead of a strided convolution, and an attention-pooling head. Feature levels follow
//! CLIP-VIS (`zwq456/CLIP-VIS:clipvis/modeling/backbone/clip.py`, SPEC §1).

use crate::config::ModifiedResNetConfig;
use crate::error::Result;
use crate::host;
use crate::nn::{is_host_backend, load_linear, resize_bilinear, Conv2d, ConvSpec};
use crate::weights::TensorStore;
use crate::FeatureMaps;
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::module::{attention, avg_pool2d};
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Tensor, TensorData};
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// `nn.AvgPool2d(k)`: kernel = stride = `k`, no padding, floor mode.
fn avg_pool<B: Backend>(x: Tensor<B, 4>, k: usize) -> Tensor<B, 4> {
    avg_pool2d(x, [k, k], [k, k], [0, 0], true, false)
}

/// A bottleneck block: 1x1 → 3x3 → (avg-pool) → 1x1 with a projected shortcut when the shape
/// changes. BatchNorms are folded into the convolutions.
#[derive(Module, Debug)]
pub struct Bottleneck<B: Backend> {
    conv1: Conv2d<B>,
    conv2: Conv2d<B>,
    conv3: Conv2d<B>,
    /// Average-pool kernel applied after `conv2` and in the shortcut (1 = none).
    stride: usize,
    /// 1x1 projection of the shortcut (`downsample.0` + `downsample.1`).
    downsample: Option<Conv2d<B>>,
}

impl<B: Backend> Bottleneck<B> {
    fn load(
        store: &TensorStore,
        key: &str,
        inplanes: usize,
        planes: usize,
        stride: usize,
        device: &B::Device,
    ) -> Result<Self> {
        let k = |name: &str| format!("{key}.{name}");
        let conv_bn = |conv: &str, bn: &str, spec| {
            Conv2d::load_with_batch_norm(store, &k(conv), &k(bn), spec, device)
        };
        let downsample = if stride > 1 || inplanes != planes * 4 {
            Some(conv_bn(
                "downsample.0",
                "downsample.1",
                ConvSpec::new(inplanes, planes * 4, 1),
            )?)
        } else {
            None
        };
        Ok(Self {
            conv1: conv_bn("conv1", "bn1", ConvSpec::new(inplanes, planes, 1))?,
            conv2: conv_bn("conv2", "bn2", ConvSpec::new(planes, planes, 3).padding(1))?,
            conv3: conv_bn("conv3", "bn3", ConvSpec::new(planes, planes * 4, 1))?,
            stride,
            downsample,
        })
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut out = relu(self.conv1.forward(x.clone()));
        out = relu(self.conv2.forward(out));
        if self.stride > 1 {
            out = avg_pool(out, self.stride);
        }
        out = self.conv3.forward(out);
        let identity = match &self.downsample {
            Some(projection) => {
                let pooled = if self.stride > 1 {
                    avg_pool(x, self.stride)
                } else {
                    x
                };
                projection.forward(pooled)
            }
            None => x,
        };
        relu(out + identity)
    }
}

/// CLIP's attention pooling: a single query (the spatial mean plus its positional embedding)
/// attends over all positions; output projected by `c_proj`.
#[derive(Module, Debug)]
pub struct AttentionPool2d<B: Backend> {
    /// `[grid² + 1, embed_dim]`; row 0 belongs to the mean token.
    positional_embedding: Param<Tensor<B, 2>>,
    q_proj: Linear<B>,
    k_proj: Linear<B>,
    v_proj: Linear<B>,
    c_proj: Linear<B>,
    num_heads: usize,
    /// The projections laid out for the host kernels, on the CPU backends without autodiff
    /// (where the masked pooling runs them); `None` elsewhere.
    host: Option<Arc<HostAttentionPool>>,
}

impl<B: Backend> AttentionPool2d<B> {
    fn load(
        store: &TensorStore,
        key: &str,
        grid: usize,
        embed_dim: usize,
        num_heads: usize,
        output_dim: usize,
        device: &B::Device,
    ) -> Result<Self> {
        let linear = |name: &str, out| {
            load_linear(
                store,
                &format!("{key}.{name}"),
                embed_dim,
                out,
                true,
                device,
            )
        };
        Ok(Self {
            positional_embedding: Param::from_tensor(store.tensor(
                &format!("{key}.positional_embedding"),
                [grid * grid + 1, embed_dim],
                device,
            )?),
            q_proj: linear("q_proj", embed_dim)?,
            k_proj: linear("k_proj", embed_dim)?,
            v_proj: linear("v_proj", embed_dim)?,
            c_proj: linear("c_proj", output_dim)?,
            num_heads,
            host: None,
        })
    }

    /// Multi-head attention of `query` `[batch, queries, C]` over `tokens` `[batch, L, C]`,
    /// `blocked` `[batch, queries, L]` (true = may not attend), then `c_proj`.
    fn attend(
        &self,
        query: Tensor<B, 3>,
        tokens: Tensor<B, 3>,
        blocked: Option<Tensor<B, 3, Bool>>,
    ) -> Tensor<B, 3> {
        let [batch, queries, channels] = query.dims();
        let length = tokens.dims()[1];
        let heads = self.num_heads;
        let head_dim = channels / heads;
        let split =
            |x: Tensor<B, 3>, n: usize| x.reshape([batch, n, heads, head_dim]).swap_dims(1, 2);
        let q = split(self.q_proj.forward(query), queries);
        let k = split(self.k_proj.forward(tokens.clone()), length);
        let v = split(self.v_proj.forward(tokens), length);
        let mask = blocked.map(|m| {
            m.unsqueeze_dim::<4>(1)
                .expand([batch, heads, queries, length])
        });
        let context = attention(q, k, v, mask, None, AttentionModuleOptions::default());
        let context = context.swap_dims(1, 2).reshape([batch, queries, channels]);
        self.c_proj.forward(context)
    }

    /// Global embedding of a `[batch, C, H, W]` map whose grid matches the positional
    /// embedding (`image_size / 32` square): `[batch, output_dim]`.
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let [batch, channels, height, width] = x.dims();
        let tokens = x.reshape([batch, channels, height * width]).swap_dims(1, 2);
        let mean = tokens.clone().mean_dim(1);
        let tokens = Tensor::cat(vec![mean, tokens], 1)
            + self.positional_embedding.val().unsqueeze_dim::<3>(0);
        let query = tokens.clone().slice([0..batch, 0..1, 0..channels]);
        self.attend(query, tokens, None)
            .reshape([batch, self.c_proj.weight.dims()[1]])
    }

    /// Positional embedding of the spatial positions resized bilinearly
    /// (`align_corners=False`) to `height x width`: `[height * width, C]`.
    fn spatial_positional_embedding(&self, height: usize, width: usize) -> Tensor<B, 2> {
        let [rows, channels] = self.positional_embedding.dims();
        let grid = ((rows - 1) as f64).sqrt().round() as usize;
        let spatial = self
            .positional_embedding
            .val()
            .slice([1..rows, 0..channels])
            .reshape([1, grid, grid, channels])
            .permute([0, 3, 1, 2]);
        let resized = if (grid, grid) == (height, width) {
            spatial
        } else {
            resize_bilinear(spatial, [height, width])
        };
        resized.reshape([channels, height * width]).transpose()
    }

    /// Mask-restricted attention pooling of CLIP-VIS (SPEC §1): per mask, the query
    /// `mean_hw(x) + pos[0]` attends only to the positions inside the mask, whose keys and
    /// values are `x + resize(pos[1:])`. `x`: `[1, C, H, W]`; `masks`: `[num_masks, H * W]`
    /// (true = inside). Masks without a positive position give a zero vector (the reference
    /// produces NaN there and zeroes the resulting class logits, which `0` reproduces).
    fn masked_pool(&self, x: Tensor<B, 4>, masks: Tensor<B, 2, Bool>) -> Tensor<B, 2> {
        let [_, channels, height, width] = x.dims();
        let num_masks = masks.dims()[0];
        if let Some(host) = &self.host {
            let device = x.device();
            let spatial = host.spatial_positions(height, width, || {
                host::values(self.spatial_positional_embedding(height, width))
            });
            let pooled = host.masked_pool(
                &host::values(x),
                &spatial,
                &masks
                    .into_data()
                    .into_vec::<bool>()
                    .expect("a boolean tensor's data holds booleans"),
            );
            let width = host.c.d_output();
            return Tensor::from_data(TensorData::new(pooled, [num_masks, width]), &device);
        }
        let tokens = x.reshape([1, channels, height * width]).swap_dims(1, 2);
        let query = tokens.clone().mean_dim(1)
            + self
                .positional_embedding
                .val()
                .slice([0..1, 0..channels])
                .unsqueeze_dim::<3>(0);
        let tokens = tokens
            + self
                .spatial_positional_embedding(height, width)
                .unsqueeze_dim::<3>(0);
        let empty = masks
            .clone()
            .int()
            .sum_dim(1)
            .equal_elem(0)
            .reshape([num_masks, 1]);
        // Empty masks are opened to everything so the softmax stays finite; their rows are
        // zeroed below.
        let blocked = masks
            .bool_not()
            .bool_and(empty.clone().bool_not().expand([num_masks, height * width]));
        // One batch whose queries are the masks: keys and values are projected once for all
        // masks; only the blocked positions differ between the masks' attention rows. (The
        // host kernel above also shares the query's projection and scores; this tensor-op
        // form, which the GPU backends run, keeps Burn's attention with a boolean mask.)
        let query = query
            .reshape([1, 1, channels])
            .expand([1, num_masks, channels]);
        let pooled = self
            .attend(query, tokens, Some(blocked.unsqueeze_dim(0)))
            .reshape([num_masks, self.c_proj.weight.dims()[1]]);
        pooled.mask_fill(empty.expand([num_masks, self.c_proj.weight.dims()[1]]), 0.0)
    }
}

/// The ModifiedResNet trunk plus attention pool.
#[derive(Module, Debug)]
pub struct ModifiedResNet<B: Backend> {
    conv1: Conv2d<B>,
    conv2: Conv2d<B>,
    conv3: Conv2d<B>,
    layers: Vec<Vec<Bottleneck<B>>>,
    attnpool: AttentionPool2d<B>,
    /// The trunk's weights laid out for the host kernels, on the CPU backends without autodiff
    /// (where [`ModifiedResNet::features`] runs them); `None` elsewhere.
    host: Option<Arc<HostTrunk>>,
}

impl<B: Backend> ModifiedResNet<B> {
    /// Loads `{key}.*` (open_clip: `visual.*`) for `config`, projecting to `output_dim`.
    pub fn load(
        store: &TensorStore,
        key: &str,
        config: &ModifiedResNetConfig,
        output_dim: usize,
        device: &B::Device,
    ) -> Result<Self> {
        let k = |name: &str| format!("{key}.{name}");
        let width = config.width;
        let conv_bn = |i: usize, spec| {
            Conv2d::load_with_batch_norm(
                store,
                &k(&format!("conv{i}")),
                &k(&format!("bn{i}")),
                spec,
                device,
            )
        };
        let conv1 = conv_bn(1, ConvSpec::new(3, width / 2, 3).stride(2).padding(1))?;
        let conv2 = conv_bn(2, ConvSpec::new(width / 2, width / 2, 3).padding(1))?;
        let conv3 = conv_bn(3, ConvSpec::new(width / 2, width, 3).padding(1))?;
        let mut inplanes = width;
        let mut layers = Vec::new();
        for (stage, &blocks) in config.layers.iter().enumerate() {
            let planes = width << stage;
            let stride = if stage == 0 { 1 } else { 2 };
            let mut stage_blocks = Vec::with_capacity(blocks);
            for block in 0..blocks {
                let block_key = k(&format!("layer{}.{block}", stage + 1));
                let block_stride = if block == 0 { stride } else { 1 };
                stage_blocks.push(Bottleneck::load(
                    store,
                    &block_key,
                    inplanes,
                    planes,
                    block_stride,
                    device,
                )?);
                inplanes = planes * 4;
            }
            layers.push(stage_blocks);
        }
        let embed_dim = width * 32;
        let attnpool = AttentionPool2d::load(
            store,
            &k("attnpool"),
            config.image_size / 32,
            embed_dim,
            config.heads,
            output_dim,
            device,
        )?;
        let mut model = Self {
            conv1,
            conv2,
            conv3,
            layers,
            attnpool,
            host: None,
        };
        if is_host_backend::<B>(device) {
            model.host = Some(Arc::new(HostTrunk::from_module(&model)));
            let pool = &model.attnpool;
            model.attnpool.host = Some(Arc::new(HostAttentionPool {
                q: host::RowLinear::from_module(&pool.q_proj),
                k: host::RowLinear::from_module(&pool.k_proj),
                v: host::RowLinear::from_module(&pool.v_proj),
                c: host::RowLinear::from_module(&pool.c_proj),
                mean_position: host::values(
                    pool.positional_embedding
                        .val()
                        .slice([0..1, 0..pool.q_proj.weight.dims()[0]]),
                ),
                heads: pool.num_heads,
                spatial: Mutex::new(HashMap::new()),
            }));
        }
        Ok(model)
    }

    /// Stem (stride 2, before the average pool) and `res2..res5` (strides 4..32) of a
    /// normalised `[batch, 3, H, W]` image.
    ///
    /// On the CPU backends (without autodiff) this runs the host kernels of [`crate::host`]
    /// channels-last; elsewhere, and in [`ModifiedResNet::features_reference`], Burn's ops.
    pub fn features(&self, pixels: Tensor<B, 4>) -> FeatureMaps<B> {
        match &self.host {
            Some(host) => host.features(pixels),
            None => self.features_reference(pixels),
        }
    }

    /// [`ModifiedResNet::features`] by Burn's tensor ops on any backend: the reference the
    /// host kernels are tested against.
    pub fn features_reference(&self, pixels: Tensor<B, 4>) -> FeatureMaps<B> {
        let mut x = relu(self.conv1.forward(pixels));
        x = relu(self.conv2.forward(x));
        let stem = relu(self.conv3.forward(x));
        let mut x = avg_pool(stem.clone(), 2);
        let mut levels = Vec::with_capacity(4);
        for stage in &self.layers {
            for block in stage {
                x = block.forward(x);
            }
            levels.push(x.clone());
        }
        FeatureMaps::from_stages(stem, levels)
    }

    /// Global image embedding from `res5` (must be the training grid, `image_size / 32`).
    pub fn embed(&self, res5: Tensor<B, 4>) -> Tensor<B, 2> {
        self.attnpool.forward(res5)
    }

    /// Grid side of the attention pool's positional embedding.
    pub fn pool_grid(&self) -> usize {
        let rows = self.attnpool.positional_embedding.dims()[0];
        ((rows - 1) as f64).sqrt().round() as usize
    }

    /// Mask-pooled embeddings of one image's `res5` `[1, C, H, W]` for `masks`
    /// `[num_masks, H * W]`: `[num_masks, output_dim]`.
    pub fn embed_masked(&self, res5: Tensor<B, 4>, masks: Tensor<B, 2, Bool>) -> Tensor<B, 2> {
        self.attnpool.masked_pool(res5, masks)
    }
}

/// One bottleneck's weights for the host kernels.
#[derive(Debug)]
struct HostBottleneck {
    conv1: host::Conv,
    conv2: host::Conv,
    conv3: host::Conv,
    stride: usize,
    downsample: Option<host::Conv>,
}

impl HostBottleneck {
    /// `[batch, h, w, c]` → (`[batch, h / stride, w / stride, 4 planes]`, h', w').
    fn forward(&self, x: &[f32], batch: usize, h: usize, w: usize) -> (Vec<f32>, usize, usize) {
        let (out, _, _) = self.conv1.forward(x, (batch, h, w), None, true);
        let (mut out, mut oh, mut ow) = self.conv2.forward(&out, (batch, h, w), None, true);
        if self.stride > 1 {
            let planes = self.conv2.channels_out();
            (out, oh, ow) = host::avg_pool(&out, batch, oh, ow, planes, self.stride);
        }
        let projected;
        let identity = match &self.downsample {
            Some(projection) => {
                let input_channels = projection.channels_in;
                let pooled;
                let source = if self.stride > 1 {
                    pooled = host::avg_pool(x, batch, h, w, input_channels, self.stride).0;
                    &pooled
                } else {
                    x
                };
                projected = projection.forward(source, (batch, oh, ow), None, false).0;
                &projected
            }
            None => x,
        };
        // conv3, the shortcut and the ReLU in one pass over each output chunk.
        self.conv3
            .forward(&out, (batch, oh, ow), Some(identity), true)
    }
}

/// The ModifiedResNet trunk (stem to res5) prepared once for the host kernels: BatchNorms
/// already folded, weights in the layouts the kernels read, activations channels-last.
#[derive(Debug)]
pub struct HostTrunk {
    stem: [host::Conv; 3],
    layers: Vec<Vec<HostBottleneck>>,
}

impl HostTrunk {
    fn from_module<B: Backend>(model: &ModifiedResNet<B>) -> Self {
        Self {
            stem: [&model.conv1, &model.conv2, &model.conv3].map(host::Conv::from_module),
            layers: model
                .layers
                .iter()
                .map(|stage| {
                    stage
                        .iter()
                        .map(|block| HostBottleneck {
                            conv1: host::Conv::from_module(&block.conv1),
                            conv2: host::Conv::from_module(&block.conv2),
                            conv3: host::Conv::from_module(&block.conv3),
                            stride: block.stride,
                            downsample: block.downsample.as_ref().map(host::Conv::from_module),
                        })
                        .collect()
                })
                .collect(),
        }
    }

    fn features<B: Backend>(&self, pixels: Tensor<B, 4>) -> FeatureMaps<B> {
        let device = pixels.device();
        let [batch, channels, h, w] = pixels.dims();
        let to_tensor = |x: &[f32], h: usize, w: usize| {
            let channels = x.len() / (batch * h * w);
            let planar = host::to_channels_first(x, batch, h * w, channels);
            Tensor::<B, 4>::from_data(TensorData::new(planar, [batch, channels, h, w]), &device)
        };
        let mut x = host::to_channels_last(&host::values(pixels), batch, channels, h * w);
        let (mut h, mut w) = (h, w);
        for conv in &self.stem {
            (x, h, w) = conv.forward(&x, (batch, h, w), None, true);
        }
        let stem = to_tensor(&x, h, w);
        let stem_channels = self.stem[2].channels_out();
        (x, h, w) = host::avg_pool(&x, batch, h, w, stem_channels, 2);
        let mut levels = Vec::with_capacity(self.layers.len());
        for stage in &self.layers {
            for block in stage {
                (x, h, w) = block.forward(&x, batch, h, w);
            }
            levels.push(to_tensor(&x, h, w));
        }
        FeatureMaps::from_stages(stem, levels)
    }
}

/// Resized spatial positional embeddings `[h·w, C]` by map size `(h, w)`.
type SpatialCache = HashMap<(usize, usize), Arc<Vec<f32>>>;

/// The attention pool's weights for the host kernels, and its resized spatial positional
/// embeddings by map size (the same for every frame of a video).
#[derive(Debug)]
pub struct HostAttentionPool {
    q: host::RowLinear,
    k: host::RowLinear,
    v: host::RowLinear,
    c: host::RowLinear,
    /// Row 0 of the positional embedding (the mean token's).
    mean_position: Vec<f32>,
    heads: usize,
    spatial: Mutex<SpatialCache>,
}

impl HostAttentionPool {
    /// The `[h·w, C]` spatial positional embedding at `(h, w)`, computed by `resize` once.
    fn spatial_positions(
        &self,
        h: usize,
        w: usize,
        resize: impl FnOnce() -> Vec<f32>,
    ) -> Arc<Vec<f32>> {
        let mut cache = self.spatial.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .entry((h, w))
            .or_insert_with(|| Arc::new(resize()))
            .clone()
    }

    /// [`AttentionPool2d::masked_pool`] on host buffers: `x` one image's `[C, L]` res5,
    /// `spatial` `[L, C]`, `masks` `[masks, L]` (true = inside) → `[masks, output_dim]`.
    ///
    /// Every mask has the same query, so its scores against the keys are one row per head,
    /// computed without projecting the keys: `q_h · (W_k x + b_k)_h = (W_kᵀ q)_h · x +
    /// q_h · b_{k,h}`, the same products reassociated (the key projection of all positions
    /// would be half the pool's work). Per mask and head only the masked softmax of that row
    /// and the weighted sum of the projected values remain, masks spread over the threads.
    fn masked_pool(&self, x: &[f32], spatial: &[f32], masks: &[bool]) -> Vec<f32> {
        let channels = self.q.d_output();
        let length = x.len() / channels;
        let count = masks.len() / length.max(1);
        let heads = self.heads;
        let head_dim = channels / heads;
        let threads = rayon::current_num_threads();
        let tokens = host::to_channels_last(x, 1, channels, length);
        // Query: the mean of the raw tokens plus the mean token's position.
        let mut query = vec![0f32; channels];
        for row in tokens.chunks_exact(channels) {
            host::add_in_place(&mut query, row);
        }
        for (q, p) in query.iter_mut().zip(&self.mean_position) {
            *q = *q / length as f32 + p;
        }
        let mut keys = tokens;
        host::add_in_place(&mut keys, spatial);
        let q = self.q.forward(&query, 1);
        let values = self.v.forward(&keys, threads);
        // Folded key weights `[C, heads]` (column h = W_k,h q_h) and bias terms q_h · b_k,h.
        let mut folded = vec![0f32; channels * heads];
        for (row, weights) in self.k.weight.chunks_exact(channels).enumerate() {
            for h in 0..heads {
                let range = h * head_dim..(h + 1) * head_dim;
                folded[row * heads + h] = dot(&weights[range.clone()], &q[range]);
            }
        }
        let offsets: Vec<f32> = (0..heads)
            .map(|h| {
                let range = h * head_dim..(h + 1) * head_dim;
                dot(&self.k.bias[range.clone()], &q[range])
            })
            .collect();
        let mut scores_lh = vec![0f32; length * heads];
        host::matmul(
            length,
            channels,
            heads,
            &keys,
            channels,
            &folded,
            &mut scores_lh,
            false,
            1,
        );
        let scale = 1.0 / (head_dim as f32).sqrt();
        // [heads, L] scaled scores.
        let mut scores = vec![0f32; heads * length];
        for l in 0..length {
            for h in 0..heads {
                scores[h * length + l] = (scores_lh[l * heads + h] + offsets[h]) * scale;
            }
        }
        let mut context = vec![0f32; count * channels];
        context
            .par_chunks_mut(channels)
            .zip(masks.par_chunks(length))
            .for_each(|(context, inside)| {
                // An empty mask pools to zeros (the reference's NaN, whose logits are zeroed).
                if !inside.iter().any(|&v| v) {
                    return;
                }
                let mut weights = vec![0f32; length];
                for h in 0..heads {
                    for (l, w) in weights.iter_mut().enumerate() {
                        *w = if inside[l] {
                            scores[h * length + l]
                        } else {
                            f32::NEG_INFINITY
                        };
                    }
                    host::softmax_in_place(&mut weights);
                    let out = &mut context[h * head_dim..(h + 1) * head_dim];
                    for (l, &w) in weights.iter().enumerate() {
                        if w != 0.0 {
                            host::add_scaled(
                                out,
                                &values[l * channels + h * head_dim..][..head_dim],
                                w,
                            );
                        }
                    }
                }
            });
        let mut pooled = self.c.forward(&context, threads);
        let width = self.c.d_output();
        for (row, inside) in pooled.chunks_exact_mut(width).zip(masks.chunks(length)) {
            if !inside.iter().any(|&v| v) {
                row.fill(0.0);
            }
        }
        pooled
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
