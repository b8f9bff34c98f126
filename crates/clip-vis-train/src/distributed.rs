//! Data-parallel training on several devices of one machine and on several machines, through
//! Burn's collective operations (`burn-collective`): every rank computes the gradients of its
//! share of the batch, the gradients are averaged by an all-reduce, and every rank applies the
//! same update, so the replicas stay identical (PyTorch DDP's scheme, which detectron2 uses).
//!
//! Burn-train's `ddp` strategy does this inside its `Learner` for backends that implement
//! `DistributedBackend` (the CubeCL GPU backends) and within one process; clip-vis trains with
//! its own loop (the frozen CLIP lives outside the autodiff graph) and must also run on the
//! CPU backends, so it calls the same collective layer directly: `register`, `all_reduce` of
//! the [`GradientsParams`] (sorted by parameter id, so every rank reduces the same tensors in
//! the same order), `finish_collective`; across machines the collective's global orchestrator
//! (`start_global_orchestrator`) connects the nodes over WebSockets.
//!
//! The loss is normalised as the reference does: `num_masks` is the mask count over all ranks
//! divided by the number of ranks (SPEC §5), the object cross-entropy and the IoU loss are
//! each rank's own means, and the gradients are averaged.

use std::path::Path;

use burn::collective::{
    all_reduce, finish_collective, register, AllReduceStrategy, CollectiveConfig, PeerId,
    ReduceOperation,
};
use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData, TensorPrimitive};

use crate::trainer::{PointSourceFactory, TrainConfig, TrainHooks, TrainSummary, Trainer};
use crate::{Result, TrainError};

/// Where this process sits in a data-parallel run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DataParallel {
    /// Machines in the run (1 for one machine).
    pub num_nodes: usize,
    /// This machine's index (0 is the one that writes checkpoints and metrics).
    pub node_rank: usize,
    /// `ws://host:port` of the global orchestrator (several machines only).
    pub orchestrator: Option<String>,
    /// `ws://host:port` other machines reach this one at (several machines only).
    pub node_address: Option<String>,
    /// Port of this machine's tensor data service (several machines only).
    pub data_port: Option<u16>,
}

impl Default for DataParallel {
    fn default() -> Self {
        Self {
            num_nodes: 1,
            node_rank: 0,
            orchestrator: None,
            node_address: None,
            data_port: None,
        }
    }
}

/// One rank of a running data-parallel collective.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// This rank (0-based over all machines).
    pub rank: usize,
    /// Ranks in all.
    pub world_size: usize,
    id: PeerId,
}

fn collective_error(e: impl std::fmt::Debug) -> TrainError {
    TrainError::Collective(format!("{e:?}"))
}

impl Peer {
    /// Sums `values` over all ranks (every rank must call it the same number of times).
    pub fn all_reduce_sum<B: Backend>(
        &self,
        values: &[f32],
        device: &B::Device,
    ) -> Result<Vec<f32>> {
        let tensor =
            Tensor::<B, 1>::from_data(TensorData::new(values.to_vec(), [values.len()]), device);
        let reduced = all_reduce::<B>(
            self.id,
            tensor.into_primitive().tensor(),
            ReduceOperation::Sum,
        )
        .map_err(collective_error)?;
        Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(reduced))
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(collective_error)
    }

    /// Averages the gradients over all ranks.
    pub fn all_reduce_gradients<B: AutodiffBackend>(
        &self,
        grads: GradientsParams,
    ) -> Result<GradientsParams> {
        grads
            .all_reduce::<B::InnerBackend>(self.id, ReduceOperation::Mean)
            .map_err(collective_error)
    }
}

/// Registers zero gradients for the parameters of `module` that got none (a rank whose batch
/// has no target mask leaves the mask heads without one): every rank must all-reduce the same
/// set of tensors.
pub fn fill_missing_gradients<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
) {
    struct Fill<'a>(&'a mut GradientsParams);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Fill<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if self.0.get::<B::InnerBackend, D>(param.id).is_none() {
                let value = param.val().inner();
                let zeros = Tensor::zeros(value.shape(), &value.device());
                self.0.register::<B::InnerBackend, D>(param.id, zeros);
            }
        }
    }
    module.visit(&mut Fill(grads));
}

fn parse_address(what: &str, value: &Option<String>) -> Result<burn_communication::Address> {
    let value = value.as_ref().ok_or_else(|| {
        TrainError::Config(format!("several machines need {what} (ws://host:port)"))
    })?;
    if !value.starts_with("ws://") {
        return Err(TrainError::Config(format!(
            "{what} {value:?}: expected ws://host:port"
        )));
    }
    value
        .parse()
        .map_err(|e| TrainError::Config(format!("{what} {value:?}: {e}")))
}

/// The collective configuration of `devices` local ranks under `parallel`.
fn collective_config(devices: usize, parallel: &DataParallel) -> Result<CollectiveConfig> {
    let config = CollectiveConfig::default()
        .with_num_devices(devices)
        .with_local_all_reduce_strategy(AllReduceStrategy::Tree(2));
    if parallel.num_nodes <= 1 {
        return Ok(config);
    }
    let port = parallel.data_port.ok_or_else(|| {
        TrainError::Config("several machines need a data-service port for each".into())
    })?;
    Ok(config
        .with_num_nodes(parallel.num_nodes as u32)
        .with_global_address(parse_address(
            "the orchestrator address",
            &parallel.orchestrator,
        )?)
        .with_node_address(parse_address(
            "this machine's address",
            &parallel.node_address,
        )?)
        .with_data_service_port(port)
        .with_global_all_reduce_strategy(AllReduceStrategy::Ring))
}

/// Trains `config` (or resumes the run in `out` when `config` is `None`) with one rank per
/// device of `devices` on this machine, as machine `parallel.node_rank` of
/// `parallel.num_nodes`; `points` replaces the sampled points' source (tests). Rank 0 (device 0 of
/// machine 0) writes the checkpoints, the metrics and the final model and runs `hooks`; with
/// several machines `out` must be a folder every machine sees (resuming reads it).
pub fn train_data_parallel<B: AutodiffBackend>(
    config: Option<TrainConfig>,
    out: &Path,
    devices: &[B::Device],
    parallel: &DataParallel,
    points: Option<PointSourceFactory>,
    progress: bool,
    hooks: &mut (dyn TrainHooks<B> + Send),
) -> Result<TrainSummary> {
    if devices.is_empty() {
        return Err(TrainError::Config(
            "data-parallel training needs a device".into(),
        ));
    }
    if parallel.node_rank >= parallel.num_nodes.max(1) {
        return Err(TrainError::Config(format!(
            "machine {} of {}: the rank must be below the number of machines",
            parallel.node_rank, parallel.num_nodes
        )));
    }
    let world_size = devices.len() * parallel.num_nodes.max(1);
    let collective = collective_config(devices.len(), parallel)?;
    let first_rank = parallel.node_rank * devices.len();
    // Machine 0 checks the output folder and writes config.json before any rank starts, so
    // no rank is left waiting in a collective for one that failed to start.
    if let Some(config) = &config {
        config.validate(world_size)?;
        if first_rank == 0 {
            crate::trainer::prepare_output(config, out)?;
        }
    }
    let mut hooks = Some(hooks);
    std::thread::scope(|scope| {
        let handles: Vec<_> = devices
            .iter()
            .enumerate()
            .map(|(local, device)| {
                let rank = first_rank + local;
                let peer = Peer {
                    rank,
                    world_size,
                    id: PeerId::from(rank),
                };
                let config = config.clone();
                let collective = collective.clone();
                let points = points.clone();
                let hooks = if rank == 0 { hooks.take() } else { None };
                scope.spawn(move || -> Result<TrainSummary> {
                    register::<B::InnerBackend>(peer.id, device.clone(), collective)
                        .map_err(collective_error)?;
                    let result = (|| {
                        let mut trainer = match config {
                            Some(config) => {
                                Trainer::<B>::start(config, out, device, Some(peer.clone()))?
                            }
                            None => Trainer::<B>::resume_as(out, device, Some(peer.clone()))?,
                        }
                        .with_progress(progress && rank == 0);
                        if let Some(points) = points {
                            trainer = trainer.with_point_source(points);
                        }
                        let mut none = crate::trainer::NoHooks;
                        match hooks {
                            Some(hooks) => trainer.run(hooks),
                            None => trainer.run(&mut none),
                        }
                    })();
                    finish_collective::<B::InnerBackend>(peer.id).map_err(collective_error)?;
                    result
                })
            })
            .collect();
        let mut summaries = Vec::new();
        for handle in handles {
            summaries.push(
                handle.join().map_err(|_| {
                    TrainError::Collective("a data-parallel rank panicked".into())
                })??,
            );
        }
        Ok(summaries.swap_remove(0))
    })
}

/// Runs the global orchestrator of a several-machine run on `port` in a background thread of
/// this process (start it on one machine, before the ranks; it serves until the process ends).
pub fn spawn_orchestrator(port: u16) -> Result<std::thread::JoinHandle<()>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            TrainError::Collective(format!("cannot start the orchestrator runtime: {e}"))
        })?;
    std::thread::Builder::new()
        .name("clip-vis-orchestrator".into())
        .spawn(move || runtime.block_on(burn_collective::start_global_orchestrator(port)))
        .map_err(|e| TrainError::Collective(format!("cannot start the orchestrator thread: {e}")))
}
