//! PyTorch `nn.MultiheadAttention` (packed `in_proj`, `out_proj`) with a boolean attention mask.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Tensor, TensorData};
use clip_vis_clip::host::{self, AttentionDims};
use clip_vis_clip::nn::{is_host_backend, linear_flat, load_linear, save_linear};
use clip_vis_clip::{Result, TensorSink, TensorStore};

/// Multi-head attention; queries are scaled by `1/sqrt(head_dim)` as PyTorch does.
#[derive(Module, Debug)]
pub struct MultiheadAttention<B: Backend> {
    q_proj: Linear<B>,
    k_proj: Linear<B>,
    v_proj: Linear<B>,
    out_proj: Linear<B>,
    heads: usize,
}

impl<B: Backend> MultiheadAttention<B> {
    /// Loads `{key}.in_proj_weight` `[3d, d]` (q, k, v rows), `{key}.in_proj_bias`,
    /// `{key}.out_proj.{weight,bias}`.
    pub fn load(
        store: &TensorStore,
        key: &str,
        d: usize,
        heads: usize,
        device: &B::Device,
    ) -> Result<Self> {
        let weight = store.values(&format!("{key}.in_proj_weight"), &[3 * d, d])?;
        let bias = store.values(&format!("{key}.in_proj_bias"), &[3 * d])?;
        let part = |i: usize| Linear {
            // PyTorch rows are outputs: transpose to Burn's [d_input, d_output].
            weight: Param::from_tensor(
                Tensor::<B, 2>::from_data(
                    TensorData::new(weight[i * d * d..(i + 1) * d * d].to_vec(), [d, d]),
                    device,
                )
                .transpose(),
            ),
            bias: Some(Param::from_tensor(Tensor::from_data(
                TensorData::new(bias[i * d..(i + 1) * d].to_vec(), [d]),
                device,
            ))),
        };
        Ok(Self {
            q_proj: part(0),
            k_proj: part(1),
            v_proj: part(2),
            out_proj: load_linear(store, &format!("{key}.out_proj"), d, d, true, device)?,
            heads,
        })
    }

    /// Writes the packed `{key}.in_proj_weight` / `in_proj_bias` and `{key}.out_proj.*`: the
    /// inverse of [`MultiheadAttention::load`].
    pub fn save(&self, sink: &mut TensorSink, key: &str) {
        let parts = [&self.q_proj, &self.k_proj, &self.v_proj];
        let weight = Tensor::cat(
            parts.iter().map(|p| p.weight.val().transpose()).collect(),
            0,
        );
        sink.put(format!("{key}.in_proj_weight"), weight);
        let bias = Tensor::cat(
            parts
                .iter()
                .map(|p| p.bias.as_ref().expect("in_proj has a bias").val())
                .collect(),
            0,
        );
        sink.put(format!("{key}.in_proj_bias"), bias);
        save_linear(sink, &format!("{key}.out_proj"), &self.out_proj);
    }

    /// # Shapes
    /// - `query`: `[batch, queries, d]`; `key`, `value`: `[batch, keys, d]`
    /// - `blocked`: `[batch, heads, queries, keys]`, true where a query may not attend
    /// - returns `[batch, queries, d]`
    pub fn forward(
        &self,
        query: Tensor<B, 3>,
        key: Tensor<B, 3>,
        value: Tensor<B, 3>,
        blocked: Option<Tensor<B, 4, Bool>>,
    ) -> Tensor<B, 3> {
        let [batch, queries, d] = query.dims();
        let keys = key.dims()[1];
        let head_dim = d / self.heads;
        let split =
            |x: Tensor<B, 3>, n: usize| x.reshape([batch, n, self.heads, head_dim]).swap_dims(1, 2);
        let q = split(linear_flat(&self.q_proj, query), queries);
        let k = split(linear_flat(&self.k_proj, key), keys);
        let v = split(linear_flat(&self.v_proj, value), keys);
        let context = attention(q, k, v, blocked, None, AttentionModuleOptions::default())
            .swap_dims(1, 2)
            .reshape([batch, queries, d]);
        linear_flat(&self.out_proj, context)
    }

    /// [`MultiheadAttention::forward`] with one mask for all heads, `blocked`
    /// `[batch, queries, keys]`.
    ///
    /// On the CPU backends without autodiff the attention itself runs the host kernel
    /// [`host::attention`], which reads each head's columns in place and never expands the
    /// mask over the heads; elsewhere it is `forward` with the mask expanded.
    pub fn forward_shared_mask(
        &self,
        query: Tensor<B, 3>,
        key: Tensor<B, 3>,
        value: Tensor<B, 3>,
        blocked: Option<Tensor<B, 3, Bool>>,
    ) -> Tensor<B, 3> {
        let device = query.device();
        let [batch, queries, _] = query.dims();
        let keys = key.dims()[1];
        if !is_host_backend::<B>(&device) {
            let blocked = blocked.map(|m| {
                m.unsqueeze_dim::<4>(1)
                    .expand([batch, self.heads, queries, keys])
            });
            return self.forward(query, key, value, blocked);
        }
        let key = host::values(key);
        let value = host::values(value);
        self.forward_host_memory(query, &key, &value, blocked)
    }

    /// [`MultiheadAttention::forward_shared_mask`] on a CPU backend without autodiff, with the
    /// keys and values already on the host as rows (`[batch, keys, d]`, row-major): the decoder
    /// forms each level's memory there once for all the layers that attend to it.
    pub(crate) fn forward_host_memory(
        &self,
        query: Tensor<B, 3>,
        key: &[f32],
        value: &[f32],
        blocked: Option<Tensor<B, 3, Bool>>,
    ) -> Tensor<B, 3> {
        let device = query.device();
        let [batch, queries, d] = query.dims();
        let keys = key.len() / (batch * d);
        // The projections on the host too (bias written before the product, no extra pass);
        // the weights are read from the module at each call (4 x d², about 1 MB).
        let threads = rayon::current_num_threads();
        let project = |linear: &burn::nn::Linear<B>, x: &[f32]| {
            host::RowLinear::from_module(linear).forward(x, threads)
        };
        let q = project(&self.q_proj, &host::values(query));
        let k = project(&self.k_proj, key);
        let v = project(&self.v_proj, value);
        let mask: Option<Vec<bool>> = blocked.map(|m| {
            m.into_data()
                .into_vec::<bool>()
                .expect("a boolean tensor's data holds booleans")
        });
        let context = host::attention(
            &q,
            &k,
            &v,
            mask.as_deref(),
            AttentionDims {
                batch,
                queries,
                keys,
                heads: self.heads,
                head_dim: d / self.heads,
            },
        );
        let out = project_host(&self.out_proj, &context, threads);
        Tensor::from_data(TensorData::new(out, [batch, queries, d]), &device)
    }
}

/// `linear` applied to host rows.
fn project_host<B: Backend>(linear: &burn::nn::Linear<B>, x: &[f32], threads: usize) -> Vec<f32> {
    host::RowLinear::from_module(linear).forward(x, threads)
}
