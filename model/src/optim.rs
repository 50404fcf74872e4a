//! Optimisers (SGD with momentum, AdamW) and learning-rate schedules.
//!
//! Written here rather than taken from candle-nn because candle-nn's SGD
//! has no momentum, and because the optimiser state must be ours to reset
//! at the start of each federated round and to reason about under DP-SGD.

use std::f64::consts::PI;

use candle_core::{Tensor, backprop::GradStore};

use crate::error::{ModelError, Result};
use crate::model::Model;

/// Which optimiser, with its own hyper-parameters.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub enum OptimizerKind {
    /// SGD with (heavy-ball or Nesterov) momentum and coupled L2 weight decay, as PyTorch's.
    Sgd { momentum: f64, nesterov: bool },
    /// Adam with decoupled weight decay (Loshchilov and Hutter 2019), as PyTorch's AdamW.
    AdamW { beta1: f64, beta2: f64, eps: f64 },
}

impl OptimizerKind {
    pub fn sgd() -> Self {
        OptimizerKind::Sgd {
            momentum: 0.9,
            nesterov: true,
        }
    }

    pub fn adamw() -> Self {
        OptimizerKind::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// Learning rate as a function of the step number.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub enum LrSchedule {
    Constant,
    /// Linear warm-up from lr/warmup to lr over `warmup_steps`, then a
    /// half-cosine down to `final_frac * lr` at `total_steps` (and flat after).
    Cosine {
        warmup_steps: u64,
        total_steps: u64,
        final_frac: f64,
    },
    /// Linear warm-up, then multiply by `gamma` every `every` steps.
    Step {
        warmup_steps: u64,
        every: u64,
        gamma: f64,
    },
}

impl LrSchedule {
    /// Cosine decay to 1% of the base rate over `total_steps`, after a linear warm-up.
    pub fn cosine(warmup_steps: u64, total_steps: u64) -> Self {
        LrSchedule::Cosine {
            warmup_steps,
            total_steps,
            final_frac: 0.01,
        }
    }

    /// The learning rate at (0-based) `step` for base rate `lr`.
    pub fn lr_at(&self, lr: f64, step: u64) -> f64 {
        let warm =
            |w: u64| -> Option<f64> { (step < w).then(|| lr * (step + 1) as f64 / w as f64) };
        match *self {
            LrSchedule::Constant => lr,
            LrSchedule::Cosine {
                warmup_steps,
                total_steps,
                final_frac,
            } => warm(warmup_steps).unwrap_or_else(|| {
                let span = total_steps.saturating_sub(warmup_steps).max(1);
                let p = ((step - warmup_steps) as f64 / span as f64).min(1.0);
                lr * (final_frac + (1.0 - final_frac) * 0.5 * (1.0 + (PI * p).cos()))
            }),
            LrSchedule::Step {
                warmup_steps,
                every,
                gamma,
            } => warm(warmup_steps).unwrap_or_else(|| {
                let k = (step - warmup_steps) / every.max(1);
                lr * gamma.powi(k.min(i32::MAX as u64) as i32)
            }),
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::InvalidConfig(m));
        match *self {
            LrSchedule::Constant => Ok(()),
            LrSchedule::Cosine { final_frac, .. } if !(0.0..=1.0).contains(&final_frac) => bad(
                format!("cosine final fraction {final_frac} is not in [0, 1]"),
            ),
            LrSchedule::Step { every: 0, .. } => bad("step schedule with every = 0".into()),
            LrSchedule::Step { gamma, .. } if !(gamma > 0.0 && gamma <= 1.0) => {
                bad(format!("step schedule gamma {gamma} is not in (0, 1]"))
            }
            _ => Ok(()),
        }
    }
}

/// Per-parameter state, in the model's parameter order.
enum Slot {
    Sgd { buf: Option<Tensor> },
    Adam { m: Tensor, v: Tensor },
}

/// An optimiser bound to one model's parameter list.
pub(crate) struct Optimizer {
    kind: OptimizerKind,
    weight_decay: f64,
    slots: Vec<Slot>,
    /// Which parameters are decayed: weights of convolutions and linear
    /// layers (rank >= 2). Normalisation scales and biases are not, as
    /// decaying them only fights the normalisation.
    decay: Vec<bool>,
    t: u64,
}

impl Optimizer {
    pub(crate) fn new(model: &Model, kind: OptimizerKind, weight_decay: f64) -> Result<Self> {
        let mut slots = Vec::new();
        let mut decay = Vec::new();
        for (_, v) in model.vars() {
            slots.push(match kind {
                OptimizerKind::Sgd { .. } => Slot::Sgd { buf: None },
                OptimizerKind::AdamW { .. } => Slot::Adam {
                    m: v.as_tensor().zeros_like()?,
                    v: v.as_tensor().zeros_like()?,
                },
            });
            decay.push(v.as_tensor().rank() >= 2);
        }
        Ok(Optimizer {
            kind,
            weight_decay,
            slots,
            decay,
            t: 0,
        })
    }

    /// Applies one update with learning rate `lr`. Parameters without a
    /// gradient (not reached by the loss) are left alone.
    pub(crate) fn step(&mut self, model: &Model, grads: &GradStore, lr: f64) -> Result<()> {
        self.t += 1;
        let t = self.t as i32;
        for ((slot, decay), (_, var)) in self.slots.iter_mut().zip(&self.decay).zip(model.vars()) {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let g = g.detach();
            let w = var.as_tensor().detach();
            let wd = if *decay { self.weight_decay } else { 0.0 };
            let new_w = match (&self.kind, slot) {
                (OptimizerKind::Sgd { momentum, nesterov }, Slot::Sgd { buf }) => {
                    let g = if wd > 0.0 { (&g + (&w * wd)?)? } else { g };
                    let b = match buf.take() {
                        Some(b) => ((b * *momentum)? + &g)?,
                        None => g.clone(),
                    };
                    let dir = if *nesterov {
                        (&g + (&b * *momentum)?)?
                    } else {
                        b.clone()
                    };
                    *buf = Some(b);
                    (w - (dir * lr)?)?
                }
                (OptimizerKind::AdamW { beta1, beta2, eps }, Slot::Adam { m, v }) => {
                    *m = ((&*m * *beta1)? + (&g * (1.0 - beta1))?)?;
                    *v = ((&*v * *beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
                    let m_hat = (&*m / (1.0 - beta1.powi(t)))?;
                    let v_hat = (&*v / (1.0 - beta2.powi(t)))?;
                    let upd = (m_hat / (v_hat.sqrt()? + *eps)?)?;
                    ((w * (1.0 - lr * wd))? - (upd * lr)?)?
                }
                _ => unreachable!("slots are made for the optimiser kind"),
            };
            var.set(&new_w)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_schedule_shape() {
        let s = LrSchedule::Cosine {
            warmup_steps: 10,
            total_steps: 110,
            final_frac: 0.0,
        };
        assert!((s.lr_at(1.0, 0) - 0.1).abs() < 1e-12);
        assert!((s.lr_at(1.0, 9) - 1.0).abs() < 1e-12);
        assert!((s.lr_at(1.0, 10) - 1.0).abs() < 1e-12);
        assert!((s.lr_at(1.0, 60) - 0.5).abs() < 1e-12);
        assert!(s.lr_at(1.0, 110).abs() < 1e-12);
        assert!(s.lr_at(1.0, 500).abs() < 1e-12);
    }

    #[test]
    fn step_schedule_shape() {
        let s = LrSchedule::Step {
            warmup_steps: 0,
            every: 10,
            gamma: 0.1,
        };
        assert_eq!(s.lr_at(1.0, 9), 1.0);
        assert!((s.lr_at(1.0, 10) - 0.1).abs() < 1e-12);
        assert!((s.lr_at(1.0, 25) - 0.01).abs() < 1e-12);
        assert!(
            LrSchedule::Step {
                warmup_steps: 0,
                every: 0,
                gamma: 0.1
            }
            .validate()
            .is_err()
        );
    }
}
