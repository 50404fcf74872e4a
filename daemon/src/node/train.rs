//! [`LocalTraining`]: the update source of a hospital in training mode. Each
//! round it takes the global model, measures it on the hospital's own
//! validation images, trains the configured number of steps on its own
//! training images, and hands the change (and its example count, the
//! weight of the mean) to secure aggregation. Images never leave it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use primia_model::data::{DataSource, load};
use primia_model::privacy::{DpConfig, DpTrainer, PrivacyAccountant, noise_multiplier_for};
use primia_model::train::{ClassWeighting, Trainer, evaluate};
use primia_model::{Architecture, Dataset, Model, ModelSpec, OptimizerKind, TrainConfig};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use zeroize::Zeroizing;

use super::model::GlobalModel;
use super::source::{Update, UpdateSource};
use crate::config::{PrivacyConfig, TrainingConfig};
use crate::store::{PrivacySpent, Store};

/// Context of the member's training seed: the shared seed mixed with the
/// member's name, so hospitals shuffle and augment differently.
const MEMBER_SEED: &str = "primia 2026-11 daemon member training seed v1";

/// Most training examples a member may claim: the fixed-point bound of
/// secure aggregation (`primia_crypto::fixed::MAX_EXAMPLES`).
const MAX_EXAMPLES: usize = primia_crypto::fixed::MAX_EXAMPLES as usize;

/// A hospital's local training: its data and its copy of the model.
///
/// The optimiser starts afresh from every global model, as in FedAvg:
/// moments carried over from the previous round point where this member's
/// own data pulled the model last time, not where the consortium's average
/// is, and with skewed data they make the global model swing from round to
/// round.
pub struct LocalTraining {
    spec: ModelSpec,
    seed: u64,
    model: Model,
    train_cfg: TrainConfig,
    train: Dataset,
    val: Dataset,
    steps: u64,
    /// Rounds over which the learning rate decays (cosine); 0 keeps it constant.
    horizon: u64,
    /// DP-SGD and its accountant, when `[privacy]` is enabled.
    private: Option<Private>,
    rng: ChaCha8Rng,
    settings: String,
    /// SCAFFOLD: the global vector is the weights followed by the
    /// consortium's control variate `c`; this member keeps its own `c_i`.
    scaffold: Option<Scaffold>,
    /// `keep_optimizer_state`: the trainers live from round to round.
    keep_optimizer: bool,
    kept: Option<Trainer>,
    kept_dp: Option<DpTrainer>,
}

/// A member's SCAFFOLD state. `c_i` is the mean raw gradient of its last
/// local training: not written to disk (it is as revealing as an unmasked
/// update). A member that has none yet (first round, or restarted) takes
/// the consortium's `c`, so its first round is a plain FedAvg round.
struct Scaffold {
    own: Option<Zeroizing<Vec<f32>>>,
}

impl std::fmt::Debug for LocalTraining {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalTraining")
            .field("settings", &self.settings)
            .field("train", &self.train.len())
            .field("val", &self.val.len())
            .finish_non_exhaustive()
    }
}

/// Differentially private training of one member: DP-SGD's settings, the
/// budget, and the accountant, kept durably in the member's store.
struct Private {
    dp: DpConfig,
    target_epsilon: f64,
    delta: f64,
    accountant: PrivacyAccountant,
    store: Arc<Store>,
    /// The budget is used up: updates are empty from now on.
    exhausted: bool,
}

impl Private {
    /// Sets DP-SGD up for `examples` training images and a run of
    /// `planned_steps` steps, with the accountant as stored.
    fn new(
        cfg: &PrivacyConfig,
        store: Arc<Store>,
        batch_size: usize,
        examples: usize,
        planned_steps: u64,
    ) -> anyhow::Result<Self> {
        let sample_rate = DpConfig::sample_rate_for(batch_size, examples);
        let noise_multiplier = match cfg.noise_multiplier {
            Some(s) => s,
            None => {
                noise_multiplier_for(sample_rate, planned_steps, cfg.delta, cfg.target_epsilon)
                    .context("privacy: no noise multiplier meets the budget")?
                    .noise_multiplier
            }
        };
        let dp = DpConfig {
            clip_norm: cfg.clip_norm,
            noise_multiplier,
            sample_rate,
        };
        dp.validate()?;
        let accountant = match store.privacy_accountant()? {
            Some(json) => serde_json::from_slice::<PrivacyAccountant>(&json)
                .context("the stored privacy accountant is unreadable")?,
            None => PrivacyAccountant::new(),
        };
        let spent = accountant.epsilon(cfg.delta)?.epsilon;
        tracing::info!(
            sample_rate,
            noise_multiplier,
            clip_norm = cfg.clip_norm,
            target_epsilon = cfg.target_epsilon,
            delta = cfg.delta,
            spent_epsilon = spent,
            "differentially private training"
        );
        Ok(Self {
            dp,
            target_epsilon: cfg.target_epsilon,
            delta: cfg.delta,
            exhausted: false,
            accountant,
            store,
        })
    }

    /// Stores the accountant and what it reports, flushed.
    fn persist(&self) -> anyhow::Result<f64> {
        let spent = self.accountant.epsilon(self.delta)?;
        self.store.set_privacy_accounting(
            PrivacySpent {
                epsilon: spent.epsilon,
                delta: self.delta,
            },
            &serde_json::to_vec(&self.accountant)?,
        )?;
        Ok(spent.epsilon)
    }
}

impl LocalTraining {
    /// Loads the member's images from `data` (a folder of class subfolders
    /// or a MedMNIST `.npz`) and prepares training as `cfg` says. A folder
    /// is split per class, deterministically: 70 % training, 10 %
    /// validation (the 20 % test share is left for the hospital's own use).
    pub fn load(
        data: &Path,
        cfg: &TrainingConfig,
        horizon: u64,
        privacy: Option<(PrivacyConfig, Arc<Store>)>,
        member: &str,
    ) -> anyhow::Result<Self> {
        let source = DataSource::from_path(Some(data));
        if matches!(source, DataSource::MedMnist(_)) && !data.is_file() {
            anyhow::bail!(
                "data {}: not found (expected a folder of class subfolders or a MedMNIST .npz file)",
                data.display()
            );
        }
        let loaded = load(&source, Some(cfg.input_size), cfg.seed)
            .with_context(|| format!("cannot load the training data {}", data.display()))?;
        if !loaded.skipped.is_empty() {
            tracing::warn!(
                skipped = loaded.skipped.len(),
                first = %format!("{}: {}", loaded.skipped[0].0.display(), loaded.skipped[0].1),
                "some image files cannot be used and are left out"
            );
        }
        tracing::info!(data = %loaded.description, "training data loaded");
        let mut me = Self::new(loaded.splits.train, loaded.splits.val, cfg, horizon, member)?;
        if let Some((p, store)) = privacy {
            // DP-SGD's noise and batch sampling must be unpredictable: a
            // seed others know (the shared seed and this member's name)
            // would let them subtract the noise. Fresh OS randomness.
            me.rng = ChaCha8Rng::from_os_rng();
            me.private = Some(Private::new(
                &p,
                store,
                cfg.batch_size as usize,
                me.train.len(),
                horizon * u64::from(cfg.local_steps),
            )?);
        }
        Ok(me)
    }

    /// Local training on `train`, measured on `val`. With `cfg.lr_schedule`
    /// `cosine` and a `horizon` of R rounds, round r trains at
    /// `lr * (0.05 + 0.95 * (1 + cos(pi * (r - 1) / R)) / 2)`: large steps
    /// while the consortium's model is far from good, small ones once the
    /// members' pulls in different directions would only make it swing.
    pub fn new(
        train: Dataset,
        val: Dataset,
        cfg: &TrainingConfig,
        horizon: u64,
        member: &str,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(!train.is_empty(), "no training images");
        anyhow::ensure!(
            train.len() <= MAX_EXAMPLES,
            "{} training images; secure aggregation weighs at most {MAX_EXAMPLES} per member",
            train.len()
        );
        anyhow::ensure!(
            train.size() == cfg.input_size,
            "images are {0}x{0}, the model takes {1}x{1}",
            train.size(),
            cfg.input_size
        );
        let architecture: Architecture = cfg.model.parse()?;
        let spec = ModelSpec::new(architecture, cfg.input_size, train.classes())?;
        let train_cfg = train_config(cfg);
        let model = Model::new(spec.clone(), cfg.seed)?;
        // Checked now, so that a bad setting is refused at start.
        Trainer::new(&model, &train_cfg)?;
        let settings = format!(
            "{} fingerprint={} local_steps={} batch_size={} learning_rate={} lr_schedule={}/{} optimizer={} keep_optimizer_state={} algorithm={} weight_decay={} augment={} class_weights={} seed={}",
            spec.canonical(),
            &model.fingerprint().to_hex()[..16],
            cfg.local_steps,
            cfg.batch_size,
            cfg.learning_rate,
            cfg.lr_schedule,
            horizon,
            cfg.optimizer,
            cfg.keep_optimizer_state,
            cfg.algorithm,
            cfg.weight_decay,
            cfg.augment,
            cfg.class_weights,
            cfg.seed,
        );
        let mut h = blake3::Hasher::new_derive_key(MEMBER_SEED);
        h.update(&cfg.seed.to_le_bytes());
        h.update(member.as_bytes());
        Ok(Self {
            spec,
            seed: cfg.seed,
            model,
            train_cfg,
            train,
            val,
            steps: u64::from(cfg.local_steps),
            horizon: if cfg.lr_schedule == "cosine" {
                horizon
            } else {
                0
            },
            private: None,
            rng: ChaCha8Rng::from_seed(*h.finalize().as_bytes()),
            settings,
            scaffold: (cfg.algorithm == "scaffold").then_some(Scaffold { own: None }),
            keep_optimizer: cfg.keep_optimizer_state,
            kept: None,
            kept_dp: None,
        })
    }

    /// The network this member trains.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }
}

/// The model crate's training settings for a `[training]` section.
pub fn train_config(cfg: &TrainingConfig) -> TrainConfig {
    TrainConfig {
        optimizer: if cfg.optimizer == "sgd" {
            OptimizerKind::sgd()
        } else {
            OptimizerKind::adamw()
        },
        lr: cfg.learning_rate,
        weight_decay: cfg.weight_decay,
        batch_size: cfg.batch_size as usize,
        class_weighting: class_weighting(&cfg.class_weights).unwrap_or(ClassWeighting::None),
        augment: cfg.augment.then(Default::default),
        ..TrainConfig::default()
    }
}

/// Parses `training.class_weights`: `none`, `balanced`, or one weight per
/// class separated by commas (`1.9,0.7`), which a consortium agrees on, for
/// example from the classes' prevalence over all members: unlike
/// `balanced`, which each member computes on its own data, fixed weights
/// make the members' losses add up to one objective.
pub fn class_weighting(text: &str) -> Result<ClassWeighting, String> {
    match text {
        "none" => Ok(ClassWeighting::None),
        "balanced" => Ok(ClassWeighting::Balanced),
        list => {
            let weights = list
                .split(',')
                .map(|w| {
                    w.trim()
                        .parse::<f32>()
                        .ok()
                        .filter(|w| w.is_finite() && *w >= 0.0 && *w <= 1e6)
                        .ok_or_else(|| format!("{w:?} is not a weight between 0 and 1e6"))
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    format!("expected \"none\", \"balanced\" or weights like \"1.9,0.7\": {e}")
                })?;
            if weights.len() < 2 || weights.iter().all(|w| *w == 0.0) {
                return Err(format!(
                    "expected one weight per class (at least 2, not all zero), found {list:?}"
                ));
            }
            Ok(ClassWeighting::Manual(weights))
        }
    }
}

/// The learning-rate factor of `round` (from 1) under a cosine decay over
/// `horizon` rounds; 1 without a horizon.
pub fn lr_factor(round: u64, horizon: u64) -> f64 {
    if horizon == 0 {
        return 1.0;
    }
    let progress = (round.saturating_sub(1) as f64 / horizon as f64).min(1.0);
    0.05 + 0.95 * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// The network's weights in a global model vector: all of it, or with
/// SCAFFOLD the first half (the control variate follows them).
pub fn weights_of<'a>(params: &'a [f32], model: &Model) -> &'a [f32] {
    &params[..model.param_count().min(params.len())]
}

/// The metrics a member records for a model on its validation images.
pub fn metric_values(m: &primia_model::Metrics) -> BTreeMap<String, f64> {
    let mut v = BTreeMap::new();
    v.insert("val_examples".into(), m.examples as f64);
    v.insert("val_loss".into(), m.loss);
    v.insert("val_acc".into(), m.accuracy);
    if let Some(auc) = m.auc {
        v.insert("val_auc".into(), auc);
    }
    v.insert("val_sensitivity".into(), m.sensitivity);
    v.insert("val_specificity".into(), m.specificity);
    v.retain(|_, x| x.is_finite());
    v
}

impl UpdateSource for LocalTraining {
    fn parameter_count(&self) -> usize {
        let weights = self.model.param_count();
        if self.scaffold.is_some() {
            2 * weights
        } else {
            weights
        }
    }

    fn settings(&self) -> String {
        self.settings.clone()
    }

    fn initial_model(&mut self) -> anyhow::Result<Vec<f32>> {
        let mut v = Model::new(self.spec.clone(), self.seed)?.flatten()?;
        // SCAFFOLD's control variate starts at zero.
        v.resize(self.parameter_count(), 0.0);
        Ok(v)
    }

    fn evaluate(&mut self, model: &GlobalModel) -> anyhow::Result<BTreeMap<String, f64>> {
        if self.val.is_empty() {
            return Ok(BTreeMap::new());
        }
        self.model
            .unflatten(weights_of(&model.params, &self.model))?;
        Ok(metric_values(&evaluate(&self.model, &self.val)?))
    }

    fn update(&mut self, round: u64, base: &GlobalModel) -> anyhow::Result<Update> {
        anyhow::ensure!(
            base.params.len() == self.parameter_count(),
            "the global model has {} values, this member's settings make {}",
            base.params.len(),
            self.parameter_count()
        );
        let weights = self.model.param_count();
        let (start, consortium_c) = base.params.split_at(weights);
        self.model.unflatten(start)?;
        let mut cfg = self.train_cfg.clone();
        cfg.lr *= lr_factor(round, self.horizon);
        let span = tracing::info_span!("train", round, steps = self.steps, lr = cfg.lr);
        let _g = span.enter();
        let report = match &mut self.private {
            None => {
                let mut fresh = None;
                let trainer = match (&mut self.kept, self.keep_optimizer) {
                    (Some(t), true) => {
                        t.set_lr(cfg.lr);
                        t
                    }
                    (slot, true) => slot.insert(Trainer::new(&self.model, &cfg)?),
                    (_, false) => fresh.insert(Trainer::new(&self.model, &cfg)?),
                };
                if let Some(s) = &self.scaffold {
                    // Derived from c_i: wiped when dropped, as c_i is.
                    let correction = Zeroizing::new(match &s.own {
                        Some(own) => consortium_c
                            .iter()
                            .zip(own.iter())
                            .map(|(c, o)| c - o)
                            .collect::<Vec<f32>>(),
                        None => vec![0.0; weights],
                    });
                    trainer.set_drift_correction(&self.model, &correction)?;
                }
                let report = trainer.train_steps(
                    &mut self.model,
                    &self.train,
                    self.steps,
                    &mut self.rng,
                    |_| {},
                )?;
                if let Some(s) = &mut self.scaffold {
                    // No step taken (all batches of zero-weight classes): keep c_i.
                    if let Some(mean) = trainer.mean_gradient(&self.model)? {
                        s.own = Some(Zeroizing::new(mean));
                    }
                }
                report
            }
            Some(p) => {
                let dp = p.dp;
                let next = p.accountant.epsilon_after(
                    dp.sample_rate,
                    dp.noise_multiplier,
                    self.steps,
                    p.delta,
                )?;
                if next.epsilon > p.target_epsilon {
                    if !p.exhausted {
                        tracing::warn!(
                            spent = p.accountant.epsilon(p.delta)?.epsilon,
                            target = p.target_epsilon,
                            "privacy budget used up: this member no longer contributes updates (it still receives models)"
                        );
                        p.exhausted = true;
                    }
                    // Weight 0: the round goes on, the mean leaves this member out.
                    return Ok(Update {
                        n_examples: 0,
                        delta: Zeroizing::new(vec![0.0; base.params.len()]),
                    });
                }
                let mut fresh = None;
                let trainer = match (&mut self.kept_dp, self.keep_optimizer) {
                    (Some(t), true) => {
                        t.set_lr(cfg.lr);
                        t
                    }
                    (slot, true) => slot.insert(DpTrainer::new(&self.model, &cfg, dp)?),
                    (_, false) => fresh.insert(DpTrainer::new(&self.model, &cfg, dp)?),
                };
                let report = trainer.train_steps(
                    &mut self.model,
                    &self.train,
                    self.steps,
                    &mut self.rng,
                    &mut p.accountant,
                    |_| {},
                )?;
                // Durable before the update can leave this member.
                let spent = p.persist()?;
                tracing::info!(epsilon = spent, delta = p.delta, "privacy spent");
                report
            }
        };
        let after = Zeroizing::new(self.model.flatten()?);
        let mut delta: Vec<f32> = after.iter().zip(start).map(|(a, b)| a - b).collect();
        if let Some(s) = &self.scaffold {
            // The second half moves the consortium's c to the weighted mean
            // of the contributors' c_i: `c + mean(c_i - c)`.
            match &s.own {
                Some(own) => delta.extend(own.iter().zip(consortium_c).map(|(o, c)| o - c)),
                None => delta.resize(2 * weights, 0.0),
            }
        }
        anyhow::ensure!(
            delta.iter().all(|d| d.is_finite()),
            "local training diverged (a weight is not a finite number); try a smaller learning rate"
        );
        tracing::info!(
            images = report.images,
            loss = format!("{:.4}", report.mean_loss),
            seconds = format!("{:.1}", report.wall_s),
            "local training done"
        );
        Ok(Update {
            n_examples: self.train.len() as u32,
            delta: Zeroizing::new(delta),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{LocalTraining, UpdateSource, lr_factor, weights_of};
    use crate::config::TrainingConfig;
    use crate::node::model::GlobalModel;

    /// A member training on 96 small phantom images (also its validation
    /// images), without augmentation, under `cfg` otherwise.
    fn member(cfg: TrainingConfig) -> LocalTraining {
        let data = primia_model::data::phantom::phantom(96, 16, 0.5, 4).unwrap();
        let cfg = TrainingConfig {
            input_size: 16,
            augment: false,
            ..cfg
        };
        LocalTraining::new(data.clone(), data, &cfg, 0, "a").unwrap()
    }

    /// SCAFFOLD doubles the global vector (weights, then the control
    /// variate `c`, zero at first). Round one is plain FedAvg for the
    /// weights and reports `c_1 - c`; in round two the correction moves the
    /// weights away from what FedAvg would have trained.
    #[test]
    fn scaffold_carries_a_control_variate_and_corrects_the_next_round() {
        let cfg = |algorithm: &str| TrainingConfig {
            local_steps: 3,
            batch_size: 16,
            algorithm: algorithm.into(),
            ..TrainingConfig::default()
        };
        let mut plain = member(cfg("fedavg"));
        let mut scaffold = member(cfg("scaffold"));
        let p = plain.parameter_count();
        assert_eq!(scaffold.parameter_count(), 2 * p);
        assert_ne!(plain.settings(), scaffold.settings());
        let init = scaffold.initial_model().unwrap();
        assert_eq!(&init[..p], &plain.initial_model().unwrap()[..]);
        assert!(init[p..].iter().all(|c| *c == 0.0));

        let base = GlobalModel {
            round: 0,
            params: init.clone(),
        };
        assert!(scaffold.evaluate(&base).unwrap().contains_key("val_auc"));
        let u_plain = plain
            .update(
                1,
                &GlobalModel {
                    round: 0,
                    params: init[..p].to_vec(),
                },
            )
            .unwrap();
        let u_scaffold = scaffold.update(1, &base).unwrap();
        assert_eq!(&u_scaffold.delta[..p], &u_plain.delta[..]);
        let c_delta = &u_scaffold.delta[p..];
        assert!(c_delta.iter().all(|d| d.is_finite()) && c_delta.iter().any(|d| *d != 0.0));

        // Round two from the same weights, with a consortium c unlike this
        // member's own: the weights move differently from FedAvg's.
        let mut next = init.clone();
        for (i, c) in next[p..].iter_mut().enumerate() {
            *c = 0.01 * ((i % 5) as f32 - 2.0);
        }
        let u2_plain = plain
            .update(
                2,
                &GlobalModel {
                    round: 1,
                    params: next[..p].to_vec(),
                },
            )
            .unwrap();
        let u2 = scaffold
            .update(
                2,
                &GlobalModel {
                    round: 1,
                    params: next.clone(),
                },
            )
            .unwrap();
        assert_ne!(&u2.delta[..p], &u2_plain.delta[..]);
        assert_eq!(
            weights_of(
                &next,
                &primia_model::Model::new(scaffold.spec().clone(), 0).unwrap()
            )
            .len(),
            p
        );

        // A vector of the wrong length is refused, not misread.
        let err = scaffold
            .update(
                3,
                &GlobalModel {
                    round: 2,
                    params: init[..p].to_vec(),
                },
            )
            .unwrap_err();
        assert!(err.to_string().contains("values"), "{err}");
    }

    /// With `keep_optimizer_state` the momentum of round one carries into
    /// round two. One full-batch step per round from the same global model
    /// gives the same gradient g both times; Nesterov SGD (momentum 0.9)
    /// steps 1.9 lr g with a fresh buffer and (1 + 0.9 * 1.9) lr g = 2.71
    /// lr g with the kept one.
    #[test]
    fn kept_optimizer_state_carries_momentum_into_the_next_round() {
        let cfg = |keep: bool| TrainingConfig {
            local_steps: 1,
            batch_size: 96,
            algorithm: "fedavg".into(),
            keep_optimizer_state: keep,
            ..TrainingConfig::default()
        };
        let mut fresh = member(cfg(false));
        let mut kept = member(cfg(true));
        assert_ne!(fresh.settings(), kept.settings());
        let base = GlobalModel {
            round: 0,
            params: fresh.initial_model().unwrap(),
        };
        let a1 = fresh.update(1, &base).unwrap();
        let b1 = kept.update(1, &base).unwrap();
        assert_eq!(&a1.delta[..], &b1.delta[..]);
        let a2 = fresh.update(2, &base).unwrap();
        let b2 = kept.update(2, &base).unwrap();
        let dot = |x: &[f32], y: &[f32]| -> f64 {
            x.iter()
                .zip(y)
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum()
        };
        let ratio = dot(&b2.delta, &a2.delta) / dot(&a2.delta, &a2.delta);
        assert!(
            (ratio - 2.71 / 1.9).abs() < 0.01,
            "kept / fresh step {ratio}"
        );
    }

    #[test]
    fn class_weights_parse() {
        use super::{ClassWeighting, class_weighting};
        assert_eq!(class_weighting("none"), Ok(ClassWeighting::None));
        assert_eq!(class_weighting("balanced"), Ok(ClassWeighting::Balanced));
        assert_eq!(
            class_weighting("1.5, 0.5"),
            Ok(ClassWeighting::Manual(vec![1.5, 0.5]))
        );
        for bad in ["", "1", "0,0", "1,x", "-1,2", "nan,1"] {
            assert!(class_weighting(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cosine_decay_over_the_rounds() {
        assert_eq!(lr_factor(7, 0), 1.0);
        assert!((lr_factor(1, 10) - 1.0).abs() < 1e-12);
        assert!((lr_factor(6, 10) - 0.525).abs() < 1e-12);
        assert!(lr_factor(10, 10) < 0.1 && lr_factor(10, 10) > 0.05);
        assert!((lr_factor(50, 10) - 0.05).abs() < 1e-12);
        assert!((1..10).all(|r| lr_factor(r + 1, 10) < lr_factor(r, 10)));
    }
}
