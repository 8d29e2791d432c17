"""Every key a config may hold, grouped. Names follow LLaMA-Factory (and Hugging Face TrainingArguments for
the training keys, which come from `transformers.Seq2SeqTrainingArguments` itself)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class ModelArgs:
    model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "HF folder, hub id, .gguf file or alias (smollm2-135m-instruct, gemma3-270m)."}
    )
    adapter_name_or_path: Optional[str] = field(default=None, metadata={"help": "PEFT adapter(s) to load, comma-separated."})
    cache_dir: Optional[str] = field(default=None, metadata={"help": "Hub download cache."})
    model_cache_dir: Optional[str] = field(
        default=None, metadata={"help": "Where aliases are converted to safetensors (default ~/.cache/tuneforge/models, env TUNEFORGE_MODEL_CACHE)."}
    )
    model_revision: str = field(default="main", metadata={"help": "Hub revision."})
    hf_hub_token: Optional[str] = field(default=None, metadata={"help": "Hub token."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run a model's own Python code (Baichuan, ChatGLM)."})
    torch_dtype: str = field(default="auto", metadata={"help": "auto | float32 | bfloat16 | float16 for training weights."})
    infer_dtype: str = field(default="auto", metadata={"help": "auto | float32 | bfloat16 | float16 for chat/export."})
    attn_implementation: str = field(default="sdpa", metadata={"help": "sdpa | eager | flash_attention_2."})
    flash_attn: Optional[str] = field(default=None, metadata={"help": "LLaMA-Factory's name: auto | sdpa | fa2 | disabled."})
    quantization_bit: Optional[int] = field(default=None, metadata={"help": "4 or 8: QLoRA with bitsandbytes."})
    quantization_type: str = field(default="nf4", metadata={"help": "nf4 | fp4 for 4-bit."})
    double_quantization: bool = field(default=True, metadata={"help": "Nested quantisation for 4-bit."})
    quantization_method: str = field(default="bnb", metadata={"help": "Only bnb is supported."})
    gguf_file: Optional[str] = field(default=None, metadata={"help": "GGUF file inside model_name_or_path."})
    use_fast_tokenizer: bool = field(default=True, metadata={"help": "Prefer the fast (Rust) tokenizer."})
    split_special_tokens: bool = field(default=False, metadata={"help": "Tokenize special-token text as plain text."})
    new_special_tokens: Optional[str] = field(default=None, metadata={"help": "Comma-separated tokens to add."})
    resize_vocab: bool = field(default=False, metadata={"help": "Resize embeddings to the tokenizer."})
    low_cpu_mem_usage: bool = field(default=True, metadata={"help": "Always true with transformers 5 (false is warned about)."})
    rope_scaling: Optional[str] = field(default=None, metadata={"help": "Refused: set rope_scaling in the model's config.json."})
    model_max_length: Optional[int] = field(default=None, metadata={"help": "Tokenizer model_max_length override."})
    infer_backend: str = field(default="huggingface", metadata={"help": "huggingface only (vllm / sglang are refused)."})


@dataclass
class DataArgs:
    dataset: Optional[str] = field(default=None, metadata={"help": "Names from dataset_info.json or file paths, comma-separated."})
    eval_dataset: Optional[str] = field(default=None, metadata={"help": "Evaluation datasets, comma-separated."})
    dataset_dir: str = field(default="data", metadata={"help": "Folder with dataset_info.json."})
    template: str = field(default="auto", metadata={"help": "Chat format: auto (tokenizer's own) or a named template."})
    default_system: Optional[str] = field(default=None, metadata={"help": "System prompt used when a row has none."})
    enable_thinking: bool = field(default=True, metadata={"help": "For reasoning templates (qwen3)."})
    cutoff_len: int = field(default=2048, metadata={"help": "Maximum tokens per example."})
    train_on_prompt: bool = field(default=False, metadata={"help": "Train on prompt tokens too."})
    mask_history: bool = field(default=False, metadata={"help": "Train only the last assistant turn."})
    streaming: bool = field(default=False, metadata={"help": "Stream datasets (needs max_steps)."})
    buffer_size: int = field(default=16384, metadata={"help": "Refused: streamed rows are read in file order (LLaMA-Factory's shuffle buffer)."})
    mix_strategy: str = field(default="concat", metadata={"help": "concat | interleave_under | interleave_over."})
    interleave_probs: Optional[str] = field(default=None, metadata={"help": "Comma-separated sampling probabilities."})
    overwrite_cache: bool = field(default=False, metadata={"help": "Rebuild the tokenized cache."})
    preprocessing_batch_size: int = field(default=1000, metadata={"help": "Rows per map batch."})
    preprocessing_num_workers: Optional[int] = field(default=None, metadata={"help": "Processes for tokenization."})
    max_samples: Optional[int] = field(default=None, metadata={"help": "Keep at most this many rows per dataset."})
    eval_num_beams: Optional[int] = field(default=None, metadata={"help": "Beams for predict_with_generate."})
    ignore_pad_token_for_loss: bool = field(default=True, metadata={"help": "Always true: padding is never trained (false is refused)."})
    val_size: float = field(default=0.0, metadata={"help": "Validation split: fraction (<1) or row count."})
    eval_on_each_dataset: bool = field(default=False, metadata={"help": "Refused when true: one loss over all eval datasets."})
    packing: Optional[bool] = field(default=None, metadata={"help": "Greedy-pack examples into cutoff_len rows."})
    neat_packing: bool = field(default=False, metadata={"help": "Packing without attention across examples."})
    padding_free: Optional[bool] = field(default=None, metadata={"help": "Concatenate a batch into one row (default: on where supported)."})
    tool_format: Optional[str] = field(default=None, metadata={"help": "Refused: each template writes tools in its own family's format."})
    tokenized_path: Optional[str] = field(default=None, metadata={"help": "Save tokenized data here, or load it if present."})
    data_shared_file_system: bool = field(default=False, metadata={"help": "Warned: data is prepared once per machine and cached."})


@dataclass
class FinetuneArgs:
    stage: str = field(default="sft", metadata={"help": "pt | sft | rm | dpo | kto | ppo | grpo."})
    finetuning_type: str = field(default="lora", metadata={"help": "lora | freeze | full."})
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: Optional[int] = field(default=None, metadata={"help": "LoRA alpha (default 2 x rank)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target: str = field(default="all", metadata={"help": "all, or module names comma-separated."})
    additional_target: Optional[str] = field(default=None, metadata={"help": "Extra modules trained fully and saved."})
    use_rslora: bool = field(default=False, metadata={"help": "Rank-stabilised LoRA."})
    use_dora: bool = field(default=False, metadata={"help": "Weight-decomposed LoRA."})
    loraplus_lr_ratio: Optional[float] = field(default=None, metadata={"help": "Refused: LoRA+ is not implemented."})
    create_new_adapter: bool = field(default=False, metadata={"help": "New adapter on top of loaded ones."})
    freeze_trainable_layers: int = field(default=2, metadata={"help": "Train the last n (>0) or first -n (<0) layers."})
    freeze_trainable_modules: str = field(default="all", metadata={"help": "Modules inside trainable layers."})
    freeze_extra_modules: Optional[str] = field(default=None, metadata={"help": "Modules outside the layers to train."})
    freeze_vision_tower: bool = field(default=True, metadata={"help": "Multimodal only."})
    pure_bf16: bool = field(default=False, metadata={"help": "Train in pure bf16."})
    plot_loss: bool = field(default=False, metadata={"help": "Write training_loss.png (and the stage's metric plots)."})
    loss_chunk_size: int = field(default=1024, metadata={"help": "Supervised tokens per LM-head chunk."})
    disable_gradient_checkpointing: bool = field(default=False, metadata={"help": "LLaMA-Factory's name; see gradient_checkpointing."})
    peak_tflops: Optional[float] = field(default=None, metadata={"help": "Hardware peak for MFU (measured when unset)."})
    skip_memory_check: bool = field(default=False, metadata={"help": "Train even when the estimate says it cannot fit."})
    token_budget: Optional[int] = field(default=None, metadata={"help": "Batch by at most this many real tokens."})
    nproc_per_node: Optional[int] = field(default=None, metadata={"help": "Processes per node (torchrun)."})
    nnodes: Optional[int] = field(default=None, metadata={"help": "Nodes (torchrun)."})
    node_rank: Optional[int] = field(default=None, metadata={"help": "This node's rank (torchrun)."})
    master_addr: Optional[str] = field(default=None, metadata={"help": "Rendezvous address (torchrun)."})
    master_port: Optional[int] = field(default=None, metadata={"help": "Rendezvous port (torchrun)."})


@dataclass
class PreferenceArgs:
    pref_beta: float = field(default=0.1, metadata={"help": "dpo/kto: beta, how far the policy may move from the reference; orpo: weight of the odds-ratio term."})
    pref_ftx: float = field(default=0.0, metadata={"help": "dpo/kto: add this times the SFT loss of the chosen (desirable) response."})
    pref_loss: str = field(default="sigmoid", metadata={"help": "dpo: sigmoid (DPO) | hinge | ipo | orpo | simpo."})
    dpo_label_smoothing: float = field(default=0.0, metadata={"help": "sigmoid: assumed share of flipped preferences (robust DPO), 0 to 0.5."})
    simpo_gamma: float = field(default=0.5, metadata={"help": "simpo: target reward margin."})
    kto_chosen_weight: float = field(default=1.0, metadata={"help": "kto: weight of desirable examples' losses."})
    kto_rejected_weight: float = field(default=1.0, metadata={"help": "kto: weight of undesirable examples' losses."})
    pref_bco_weight: float = field(default=0.0, metadata={"help": "LLaMA-Factory's BCO mixing: not supported, must stay 0."})
    ref_model: Optional[str] = field(default=None, metadata={"help": "dpo/kto/ppo/grpo: reference model (default: the base with adapters off, or a frozen copy)."})
    ref_model_adapters: Optional[str] = field(default=None, metadata={"help": "Adapters merged into ref_model, comma-separated."})
    ref_model_quantization_bit: Optional[int] = field(default=None, metadata={"help": "4 or 8: load ref_model quantised."})
    precompute_ref_logps: bool = field(default=False, metadata={"help": "Compute reference log-probabilities once before training."})


@dataclass
class RLArgs:
    reward_model: Optional[str] = field(default=None, metadata={"help": "ppo (required), grpo (optional): output_dir of a `stage: rm` run."})
    reward_model_type: str = field(default="lora", metadata={"help": "lora: the reward adapter loads as a second adapter on the policy's base; full: its own model."})
    ppo_epochs: int = field(default=4, metadata={"help": "ppo: optimisation passes over each rollout buffer."})
    ppo_buffer_size: int = field(default=1, metadata={"help": "ppo: optimizer steps' worth of rollouts (batch x accumulation each) per buffer."})
    ppo_target: Optional[float] = field(default=None, metadata={"help": "ppo: target KL per response; set, the KL coefficient adapts to it."})
    ppo_kl_coef: float = field(default=0.2, metadata={"help": "ppo: (initial) coefficient of the per-token KL penalty."})
    ppo_horizon: int = field(default=10000, metadata={"help": "ppo: horizon of the adaptive KL controller, in rollouts."})
    ppo_score_norm: bool = field(default=False, metadata={"help": "ppo: standardise reward-model scores over each buffer."})
    ppo_whiten_rewards: bool = field(default=False, metadata={"help": "ppo: scale per-token rewards to unit variance over each buffer."})
    ppo_gamma: float = field(default=1.0, metadata={"help": "ppo: discount of generalised advantage estimation."})
    ppo_lam: float = field(default=0.95, metadata={"help": "ppo: lambda of generalised advantage estimation."})
    ppo_cliprange: float = field(default=0.2, metadata={"help": "ppo: clip range of the policy ratio."})
    ppo_cliprange_value: float = field(default=0.2, metadata={"help": "ppo: clip range of the value change."})
    ppo_vf_coef: float = field(default=0.1, metadata={"help": "ppo: weight of the value loss."})
    rollout_dtype: str = field(default="auto", metadata={"help": "ppo/grpo: weights' dtype while sampling: auto (bfloat16 where computed natively, else as trained) | float32 | bfloat16 | float16."})
    num_generations: int = field(default=4, metadata={"help": "grpo: completions per prompt (divides batch x accumulation)."})
    scale_rewards: bool = field(default=True, metadata={"help": "grpo: divide advantages by their group's reward std."})
    epsilon: float = field(default=0.2, metadata={"help": "grpo: clip range of the importance ratio."})
    epsilon_high: Optional[float] = field(default=None, metadata={"help": "grpo: upper clip range (asymmetric, DAPO); default epsilon."})
    beta: float = field(default=0.04, metadata={"help": "grpo: weight of the KL to the reference; 0 skips the reference pass."})
    loss_type: str = field(default="dapo", metadata={"help": "grpo: grpo (mean per sequence) | dr_grpo (sum / max_new_tokens) | dapo (mean per token)."})
    num_iterations: int = field(default=1, metadata={"help": "grpo: optimizer steps per batch of rollouts."})
    reward_funcs: Optional[str] = field(default=None, metadata={"help": "grpo: accuracy, format and/or module:function, comma-separated."})
    reward_weights: Optional[str] = field(default=None, metadata={"help": "grpo: one weight per reward (reward_funcs, then reward_model), comma-separated."})
    format_pattern: Optional[str] = field(default=None, metadata={"help": "grpo: regular expression of the `format` reward (default \\boxed{...})."})


@dataclass
class GenerateArgs:
    do_sample: bool = field(default=False, metadata={"help": "Sample (true) or greedy (false); ppo/grpo sample unless it is set false."})
    temperature: float = field(default=0.95, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=0.7, metadata={"help": "Nucleus sampling."})
    top_k: int = field(default=50, metadata={"help": "Top-k sampling."})
    num_beams: int = field(default=1, metadata={"help": "Beam search width."})
    max_new_tokens: int = field(default=512, metadata={"help": "Tokens to generate (ppo/grpo: per rollout)."})
    repetition_penalty: float = field(default=1.0, metadata={"help": "Repetition penalty."})
    length_penalty: float = field(default=1.0, metadata={"help": "Beam length penalty."})
    query: Optional[str] = field(default=None, metadata={"help": "chat: answer this once and exit."})


@dataclass
class ServeArgs:
    host: str = field(default="127.0.0.1", metadata={"help": "api/webchat: address to bind (env API_HOST); beyond loopback, set api_key."})
    port: Optional[int] = field(default=None, metadata={"help": "api/webchat: port (env API_PORT; default 8000 for api, 7860 for webchat)."})
    api_key: Optional[str] = field(default=None, metadata={"help": "api: clients must send `Authorization: Bearer <key>` (env API_KEY)."})
    api_model_name: Optional[str] = field(default=None, metadata={"help": "api: the model id clients name (env API_MODEL_NAME; default the adapter's or model's folder name)."})
    max_batch_size: int = field(default=16, metadata={"help": "api/webchat: answers generated together in one batch (n choices count n)."})
    max_concurrent: int = field(default=64, metadata={"help": "api: requests waiting for a batch; beyond it the server answers 429."})


@dataclass
class ExportArgs:
    export_dir: Optional[str] = field(default=None, metadata={"help": "export: the folder to write (new, empty, or an earlier export, which is replaced)."})
    export_format: str = field(default="safetensors", metadata={"help": "export: safetensors (merged HF folder) | gguf (one file for llama.cpp/Ollama, with a Modelfile)."})
    export_quantization: str = field(default="f16", metadata={"help": "export (gguf): f32 | f16 | bf16 | q8_0 | q5_1 | q5_0 | q4_1 | q4_0."})
    export_size: int = field(default=5, metadata={"help": "export (safetensors): largest shard, in GB."})
    export_device: str = field(default="cpu", metadata={"help": "export: cpu | auto (the GPU when there is one) for merging."})
    export_legacy_format: bool = field(default=False, metadata={"help": "export: true (.bin) is refused: transformers 5 writes safetensors only."})
    export_hub_model_id: Optional[str] = field(default=None, metadata={"help": "export: refused (no hub upload here); upload export_dir with `hf upload`."})
    export_quantization_bit: Optional[int] = field(default=None, metadata={"help": "export: LLaMA-Factory's GPTQ export, refused; use export_format: gguf with a quantisation."})
    export_quantization_dataset: Optional[str] = field(default=None, metadata={"help": "export: GPTQ calibration data, refused with export_quantization_bit."})
