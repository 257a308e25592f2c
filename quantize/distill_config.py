"""Student presets and distillation hyper-parameters (torch-free, so the CLI can list them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StudentSpec:
    """How a student is cut from its teacher (the student starts from the teacher's weights)."""

    name: str  # preset name, also the student's model name suffix
    text_layers: tuple[int, ...]  # teacher text blocks copied into the student, bottom to top
    cross_layers: int  # top student blocks that also run jointly over image tokens (cross-encoder)
    n_image_tokens: int  # image tokens per photo (the teacher's first ones are kept)
    vocab_size: int = 0  # 0: the teacher's vocabulary; N: keep N tokens (quantize.vocab.keep_tokens)
    hub_bank: int = 512  # training captions in the student's hubness bank of photos (t2i)
    hub_bank_images: int = 512  # training photos in its hubness bank of captions (i2t)


STUDENTS: dict[str, StudentSpec] = {
    # half of MiniLM's 6 blocks (every other one, the top block kept: it feeds the pooling and projection),
    # 2 joint blocks, 4 image tokens, 6500 of the 30522 tokens (Latin characters, the training captions'
    # tokens by frequency: 91% of Flickr8k dev captions tokenise exactly as with the full vocabulary)
    "lite-half": StudentSpec("lite-half", text_layers=(1, 3, 5), cross_layers=2, n_image_tokens=4,
                             vocab_size=6500, hub_bank=512),
    # for teachers whose reranker is late interaction over all 8 image tokens: keep the 8 tokens, and
    # one joint block to hold the per-candidate cost down
    "lite-half-8t": StudentSpec("lite-half-8t", text_layers=(1, 3, 5), cross_layers=1, n_image_tokens=8,
                                vocab_size=6500, hub_bank=512),
    # same cut without the vocabulary pruning (measures what the pruning costs)
    "lite-half-fullvocab": StudentSpec("lite-half-fullvocab", text_layers=(1, 3, 5), cross_layers=2,
                                       n_image_tokens=4, hub_bank=512),
    # the teacher's own shape ("born-again" self-distillation): does distillation alone improve it?
    "lite-full": StudentSpec("lite-full", text_layers=(0, 1, 2, 3, 4, 5), cross_layers=3, n_image_tokens=8,
                             hub_bank=4096),
    # for tests: the 3-block tiny model cut to 2 blocks, 1 joint block, 2 image tokens
    "tiny-half": StudentSpec("tiny-half", text_layers=(0, 2), cross_layers=1, n_image_tokens=2, hub_bank=64,
                              hub_bank_images=64),
}


@dataclass(frozen=True)
class DistillConfig:
    epochs: int = 2  # passes over the training images (one random caption per image per pass)
    batch_size: int = 128  # pairs per batch (distinct images): the bi-encoder KL is over this batch
    lr_text: float = 1e-4  # learning rate of the student's text blocks and embeddings
    lr_head: float = 5e-4  # learning rate of the heads, token pooling and cross-encoder parameters
    weight_decay: float = 0.01  # AdamW weight decay
    warmup_steps: int = 20  # linear warm-up steps
    temperature: float = 2.0  # softening of both models' logits in the KL terms
    kd_bi_weight: float = 1.0  # KL to the teacher's in-batch text->image and image->text distributions
    kd_ce_weight: float = 1.0  # KL to the teacher's cross-encoder scores over the top-k candidates
    emb_weight: float = 1.0  # 1 - cosine between student and teacher embeddings (text and image)
    gt_bi_weight: float = 0.5  # ground truth: symmetric InfoNCE of the student's bi-encoder
    gt_ce_weight: float = 0.5  # ground truth: listwise loss of the cross-encoder (true photo first)
    kd_li_weight: float = 0.0  # KL to the teacher's in-batch late-interaction scores (both directions); 1.0 was
    # behind the plain recipe after 2 of 6 epochs in the one run tried (dev rerank@20 17.0 vs 18.0), so off
    gt_li_weight: float = 0.0  # ground truth: symmetric InfoNCE of the student's late interaction
    ce_queries: int = 32  # captions per batch that get a cross-encoder group
    ce_candidates: int = 8  # group size: the true photo + the teacher bi-encoder's top candidates
    feature_dropout: float = 0.1  # dropout on the cached image features seen by the student
    ckpt_every: int = 25  # steps between resumable checkpoints
    eval_queries: int = 500  # dev captions used by the per-epoch evaluation
    seed: int = 0  # random seed
    threads: int = 0  # torch threads (0: all cores)
