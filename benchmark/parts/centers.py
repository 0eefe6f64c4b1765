"""CgAT's center hash codes by CHCM (Wang, Lin, Li, "CgAT: Center-Guided Adversarial Training for Deep
Hashing-Based Retrieval", WWW 2023, Sec. 3.2, Eq. 3-5), shared by the CgAT attack and the CgAT defense.

The center code of an item with labels y is the code c in {-1, +1}^K minimising (Eq. 3)

    F(c) = sum_{i in P} w_i D_H(c, b_i) - sum_{j in N} w_j D_H(c, b_j),

P the training items sharing a label with y (positives), N the others (negatives), b their codes. Since
D_H(c, b) = (K - c.b) / 2, F is minimised bit by bit by (Theorem 1, CHCM, Eq. 4)

    c = sign( sum_{i in P} w_i b_i - sum_{j in N} w_j b_j ).

Weights (Eq. 5): w_i = N/N_p * s_i and w_j = N/N_n * s_j, with s the similarity (positives) or the
dissimilarity s_max - similarity (negatives), s_max = 1 and the similarity in [0, 1]. The reference code
computes the Jaccard similarity |y & y_i| / |y | y_i| for this, so:
- ``weighting="paper"`` (default): w_i = J(y, y_i) / N_p, w_j = (1 - 0) / N_n (the common factor N drops);
- ``weighting="code"``: the reference ``hash_center_code`` computes the Jaccard values and then discards them,
  c = sign(mean_P b - mean_N b) (methods-spec 4.2, Pitfall 2), i.e. w_i = 1 / N_p.

A bit whose weighted sum is exactly 0 leaves F unchanged either way; it becomes +1 (as ``binarize``).

Zero-label items (FLICKR-25K has some): they share no label with anything, so every training item is a
negative and P is empty. ``zero_label="negatives"`` (default) keeps Eq. 3 as written: with P empty its
minimiser is c = sign(-mean of all training codes), the code farthest from the training set on average, a
valid +-1 code (SAAT's mainstay code does the same). ``zero_label="zero"`` reproduces the reference code,
whose 0/0 Jaccard turns into sign(0) = 0 for every weight and gives the all-zero vector (not a hash code:
an attack toward or away from it has no gradient; Pitfall 2); use it only to reproduce that behaviour.

    centers = center_codes(query_labels, train_labels, train_codes)   # (B, K) in {-1, +1}
"""
from __future__ import annotations

import torch

CENTER_WEIGHTINGS = ("paper", "code")
ZERO_LABEL_RULES = ("negatives", "zero")


def jaccard_similarity(labels: torch.Tensor, other_labels: torch.Tensor) -> torch.Tensor:
    """|y & y'| / |y | y'| of multi-hot label rows, (B, C) x (N, C) -> (B, N); 0 where both are empty."""
    labels, other_labels = labels.float(), other_labels.float()
    shared = labels @ other_labels.t()                                          # (B, N)
    union = labels.sum(1, keepdim=True) + other_labels.sum(1)[None, :] - shared  # (B, N)
    return torch.where(union > 0, shared / union.clamp_min(1), torch.zeros_like(shared))


def center_weights(labels: torch.Tensor, train_labels: torch.Tensor, weighting: str = "paper"
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """CHCM's positive and negative weights (Eq. 5, up to the common factor N), each (B, N).

    Positives share at least one label with the item; an empty set gets no weight (no division by zero).
    """
    if weighting not in CENTER_WEIGHTINGS:
        raise ValueError(f"weighting must be one of {', '.join(map(repr, CENTER_WEIGHTINGS))}; got {weighting!r}")
    similarity = jaccard_similarity(labels, train_labels)                     # (B, N)
    positive = (similarity > 0).float()
    negative = 1 - positive
    n_positive = positive.sum(1, keepdim=True).clamp_min(1)
    n_negative = negative.sum(1, keepdim=True).clamp_min(1)
    positive_strength = similarity if weighting == "paper" else positive      # s_i = J, or 1 in the code
    return positive_strength * positive / n_positive, negative / n_negative     # s_j = 1 - 0 for negatives


def center_codes(labels: torch.Tensor, train_labels: torch.Tensor, train_codes: torch.Tensor,
                 weighting: str = "paper", zero_label: str = "negatives") -> torch.Tensor:
    """Center codes (B, K) of items with multi-hot ``labels`` (B, C), from the training set's labels (N, C)
    and codes (N, K) (+-1 codes; the reference code, by an aliasing bug, passes tanh outputs: any reals work).
    """
    if zero_label not in ZERO_LABEL_RULES:
        raise ValueError(f"zero_label must be one of {', '.join(map(repr, ZERO_LABEL_RULES))}; got {zero_label!r}")
    if labels.ndim != 2 or train_labels.ndim != 2 or labels.shape[1] != train_labels.shape[1]:
        raise ValueError(f"labels {tuple(labels.shape)} and train_labels {tuple(train_labels.shape)} must be "
                         "(B, C) and (N, C) multi-hot rows over the same classes")
    if len(train_labels) != len(train_codes):
        raise ValueError(f"train_labels has {len(train_labels)} rows but train_codes has {len(train_codes)}")
    train_labels = train_labels.to(labels.device)
    codes = train_codes.to(labels.device).float()
    positive_weight, negative_weight = center_weights(labels, train_labels, weighting)
    score = positive_weight @ codes - negative_weight @ codes                   # (B, K)
    center = torch.where(score >= 0, 1.0, -1.0)
    if zero_label == "zero":
        center[labels.sum(1) == 0] = 0.0
    return center
