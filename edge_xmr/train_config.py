"""Training hyper-parameters (torch-free so the CLI can list them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 5  # passes over the training images (one random caption per image per pass)
    batch_size: int = 128  # pairs per contrastive batch (distinct images)
    lr_text: float = 5e-5  # learning rate of the fine-tuned text blocks
    lr_head: float = 1e-3  # learning rate of heads, token pooling and cross-encoder parameters
    lr_tower: float = 1e-4  # learning rate of the image tower's fine-tuned last blocks (ModelConfig.tower_train_blocks)
    weight_decay: float = 0.01  # AdamW weight decay
    warmup_steps: int = 50  # linear warm-up steps
    feature_dropout: float = 0.1  # dropout on the frozen image features (regularises the head)
    ce_start_epoch: int = 1  # first epoch (0-based) with cross-encoder training (needs mined negatives)
    ce_queries: int = 32  # captions per batch that get a cross-encoder group
    hard_negatives: int = 6  # hard negatives per group, sampled from the bi-encoder's top ``hard_pool``
    random_negatives: int = 1  # random negatives per group
    hard_pool: int = 30  # depth of the mined candidate list
    ce_weight: float = 1.0  # weight of the cross-encoder loss
    bce_weight: float = 0.5  # weight of the binary match / no-match term inside it
    ce_text_grad: bool = True  # let the cross-encoder loss update the shared text blocks
    ce_epochs: int = 0  # then: epochs training only the cross-encoder's own parameters (shared blocks fixed)
    ce_stage_queries: int = 96  # captions per step with a cross-encoder group in that stage
    li_loss: float = 1.0  # weight of the late-interaction scorer's in-batch contrastive loss (0: not trained)
    class_distill: float = 0.5  # weight of the ImageNet class-name distillation (lite base only; 0: off)
    class_refresh: int = 25  # steps between refreshes of the class-name embeddings it uses
    crop_views: int = 0  # random-resized-crop views per photo cached besides the photo and its flip (2 gave no dev gain)
    calib_queries: int = 0  # captions per dev half the calibration of the score's weights uses (0: all of them)
    min_joint_gain: float = 1.0  # the joint pass joins the score only if it adds this much t2i rerank@20 R@1
    #                              on dev's tuning half over the best score without it (it costs most of a rerank)
    hub_bank: int = 4096  # training captions kept as the bank of the photos' hubness statistic (0: no hubness
    # correction); dev rerank@20 R@1 grew up to 4096 (docs/model.md), the compact save keeps it in int8 (1 MB)
    hub_bank_images: int = 512  # training photos kept as the bank of the captions' statistic (image -> text)
    hub_floor_pct: float = 5.0  # hubness statistics are floored at this percentile of the calibration
    #                             photos' / captions' (0: no floor; out-of-domain photos are not rewarded)
    ckpt_every: int = 100  # steps between resumable checkpoints
    eval_queries: int = 500  # dev captions (of the tuning half) used by the periodic evaluation
    seed: int = 0  # random seed
    threads: int = 0  # torch threads (0: all cores)
