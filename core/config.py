"""RunConfig: the single source of truth shared by the form, the YAML file, the CLI, the worker
and the memory estimate.

Each field carries its own hint (English and 简体中文), bounds and choices, the way peft's
LoraConfig carries `metadata={"help": ...}`: the form, `--help` and validation messages all read
them from here, so they cannot drift apart.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from core.errors import ConfigError

EMBEDDED_MODEL = "SmolLM2-135M-Instruct"
METHODS = ("lora", "qlora", "full", "freeze")


def opt(default, help: str, zh: str, *, label: str = "", label_zh: str = "", min=None, max=None,
        choices=None, min_exclusive: bool = False):
    """A config field with its hint, label, bounds and choices in one place."""
    meta = {"help": help, "help_zh": zh, "label": label, "label_zh": label_zh, "min": min,
            "max": max, "choices": choices, "min_exclusive": min_exclusive}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


def section(cls, help: str, zh: str):
    return field(default_factory=cls, metadata={"help": help, "help_zh": zh, "section": True})


@dataclass
class DatasetSpec:
    path: str = opt("", "A data file (JSON, JSONL, CSV, Parquet, TXT) or the name of a saved dataset.",
                    "数据文件（JSON、JSONL、CSV、Parquet、TXT）或已保存数据集的名称。",
                    label="Dataset", label_zh="数据集")
    ratio: typing.Optional[float] = opt(
        None, "Share of this dataset in the training mix (e.g. 0.9 and 0.1). Empty: use every row once.",
        "该数据集在训练混合中的占比（如 0.9 和 0.1）。留空：每行使用一次。",
        label="Mix ratio", label_zh="混合比例", min=0.0, min_exclusive=True)
    format: str = opt("auto", "Data format; auto detects it from the columns.",
                      "数据格式；auto 根据列名自动识别。", label="Format", label_zh="格式",
                      choices=["auto", "alpaca", "messages", "sharegpt", "text", "preference"])
    columns: dict = opt({}, "Column mapping, e.g. {instruction: question, output: answer}.",
                        "列映射，例如 {instruction: question, output: answer}。",
                        label="Columns", label_zh="列映射")


@dataclass
class LoraOptions:
    rank: int = opt(16, "LoRA rank r: size of the low-rank update. 8-64 is typical; higher learns more "
                        "and costs more memory.",
                    "LoRA 秩 r：低秩更新的维度。常用 8-64；越大可学得越多，显存也越多。",
                    label="Rank", label_zh="秩", min=1, max=4096)
    alpha: float = opt(32.0, "LoRA alpha: the update is scaled by alpha/rank (alpha/sqrt(rank) with "
                             "rsLoRA). Usually 2 x rank.",
                       "LoRA alpha：更新按 alpha/rank 缩放（rsLoRA 为 alpha/sqrt(rank)）。通常取 2 倍秩。",
                       label="Alpha", label_zh="Alpha", min=0.0, min_exclusive=True)
    dropout: float = opt(0.05, "Dropout on the LoRA input; 0-0.1.", "LoRA 输入的 dropout；0-0.1。",
                         label="Dropout", label_zh="Dropout", min=0.0, max=0.9)
    target_modules: str = opt("all-linear", "Layers that get adapters: all-linear, or names separated by "
                                            "commas (q_proj,v_proj).",
                              "添加适配器的层：all-linear，或用逗号分隔的名称（q_proj,v_proj）。",
                              label="Target modules", label_zh="目标模块")
    rslora: bool = opt(False, "Rank-stabilised LoRA: scale by alpha/sqrt(rank); helps at high ranks.",
                       "秩稳定 LoRA：按 alpha/sqrt(rank) 缩放；高秩时更稳定。", label="rsLoRA", label_zh="rsLoRA")
    dora: bool = opt(False, "DoRA: learn magnitude and direction apart; slower, sometimes better.",
                     "DoRA：分别学习幅度与方向；更慢，有时效果更好。", label="DoRA", label_zh="DoRA")


@dataclass
class QuantOptions:
    quant_type: str = opt("nf4", "4-bit data type for QLoRA; NF4 suits normally distributed weights.",
                          "QLoRA 的 4 位数据类型；NF4 适合正态分布的权重。",
                          label="4-bit type", label_zh="4 位类型", choices=["nf4", "fp4"])
    double_quant: bool = opt(True, "Quantize the quantization constants too (saves about 0.4 bits per weight).",
                             "对量化常数再次量化（每个权重约省 0.4 位）。",
                             label="Double quantization", label_zh="双重量化")
    upcast_unquantized: bool = opt(True, "Cast the weights that stay unquantized (embeddings, norms, output head) "
                                   "to fp32, as peft's prepare_model_for_kbit_training does. Off keeps them in the "
                                   "model's half precision: a half-precision residual stream, about half the "
                                   "activation memory.",
                                   "将未量化的权重（嵌入、归一化层、输出头）转为 fp32，与 peft 的 "
                                   "prepare_model_for_kbit_training 相同。关闭则保留半精度：残差流为半精度，"
                                   "激活显存约减半。",
                                   label="Upcast unquantized weights to fp32", label_zh="未量化权重转 fp32")


@dataclass
class FreezeOptions:
    trainable_layers: int = opt(2, "Freeze method: how many of the last transformer layers are trained.",
                                "冻结微调：训练最后多少层 Transformer。",
                                label="Trainable layers", label_zh="可训练层数", min=1, max=1000)


@dataclass
class DataOptions:
    max_seq_len: int = opt(1024, "Longest sample in tokens; longer samples are truncated.",
                           "样本最大长度（token）；更长的会被截断。", label="Max length", label_zh="最大长度",
                           min=16, max=1_048_576)
    packing: bool = opt(False, "Pack several samples into one sequence with separate attention: no "
                               "padding, fewer steps.",
                        "把多个样本打包进一个序列（注意力互不干扰）：无填充，步数更少。",
                        label="Packing", label_zh="样本打包")
    train_on: str = opt("assistant", "Which tokens teach the model: only the assistant's replies, or all.",
                        "哪些 token 参与训练：仅助手回复，或全部。", label="Train on", label_zh="训练目标",
                        choices=["assistant", "all"])
    eval_split: float = opt(0.0, "Share of the rows held out for evaluation (0 = none).",
                            "留作评估的数据比例（0 = 不评估）。", label="Eval split", label_zh="评估比例",
                            min=0.0, max=0.5)


MAX_STEPS = 10_000_000      # far past any fine-tuning run; a typo of more digits is refused, not trained on


@dataclass
class TrainOptions:
    epochs: float = opt(3.0, "Passes over the data (ignored when max steps is set).",
                        "遍历数据的轮数（设置最大步数时忽略）。", label="Epochs", label_zh="轮数",
                        min=0.0, min_exclusive=True, max=1000)
    max_steps: int = opt(0, "Stop after this many optimizer steps; 0 = train by epochs.",
                         "训练这么多优化步后停止；0 = 按轮数训练。", label="Max steps", label_zh="最大步数",
                         min=0, max=MAX_STEPS)
    learning_rate: float = opt(2e-4, "Step size. LoRA: 1e-4 to 3e-4; full fine-tuning: 1e-5 to 5e-5.",
                               "学习率。LoRA：1e-4 到 3e-4；全量微调：1e-5 到 5e-5。",
                               label="Learning rate", label_zh="学习率", min=0.0, min_exclusive=True, max=1.0)
    scheduler: str = opt("cosine", "How the learning rate changes over the run.", "学习率随训练的变化方式。",
                         label="Scheduler", label_zh="调度器",
                         choices=["cosine", "linear", "constant", "constant_with_warmup"])
    warmup_ratio: float = opt(0.03, "Share of the steps spent warming the learning rate up.",
                              "学习率预热所占的步数比例。", label="Warmup ratio", label_zh="预热比例",
                              min=0.0, max=0.5)
    batch_size: int = opt(4, "Samples per micro-batch on each device.", "每个设备每个微批次的样本数。",
                          label="Batch size", label_zh="批大小", min=1, max=4096)
    grad_accum: int = opt(1, "Micro-batches per optimizer step; effective batch = batch size x this.",
                          "每个优化步累积的微批次数；有效批大小 = 批大小 x 该值。",
                          label="Gradient accumulation", label_zh="梯度累积", min=1, max=4096)
    gradient_checkpointing: bool = opt(False, "Recompute activations in the backward pass: much less "
                                              "memory, about 30% slower.",
                                       "反向传播时重算激活：显存大幅减少，速度约慢 30%。",
                                       label="Gradient checkpointing", label_zh="梯度检查点")
    optimizer: str = opt("adamw", "AdamW keeps two fp32 states per trainable weight; 8-bit AdamW keeps "
                                  "them in 8 bits; paged moves them to CPU under pressure.",
                         "AdamW 为每个可训练参数保存两个 fp32 状态；8 位 AdamW 用 8 位保存；paged 在显存紧张时换到内存。",
                         label="Optimizer", label_zh="优化器", choices=["adamw", "adamw8bit", "paged_adamw8bit"])
    dtype: str = opt("auto", "Compute precision. auto: bf16 where the GPU or CPU has it (CPUs with "
                             "AVX512-BF16 or AMX), else fp16 on GPU and fp32 on CPU.",
                     "计算精度。auto：GPU 或 CPU（支持 AVX512-BF16 或 AMX）支持时用 bf16，否则 GPU 用 fp16、CPU 用 fp32。",
                     label="Precision", label_zh="精度", choices=["auto", "bf16", "fp16", "fp32"])
    seed: int = opt(42, "Random seed for shuffling, dropout and initialisation.", "打乱、dropout 和初始化的随机种子。",
                    label="Seed", label_zh="随机种子", min=0, max=2**32 - 1)
    weight_decay: float = opt(0.0, "Weight decay of the optimizer.", "优化器的权重衰减。",
                              label="Weight decay", label_zh="权重衰减", min=0.0, max=1.0)
    max_grad_norm: float = opt(1.0, "Clip gradients to this norm (0 = no clipping).", "梯度裁剪的范数（0 = 不裁剪）。",
                               label="Max grad norm", label_zh="梯度裁剪", min=0.0)
    padding_free: bool = opt(True, "Put each batch's samples one after another in a single row instead of "
                                    "padding them: no compute spent on padding, same loss.",
                             "把一个批次的样本首尾相接放进一行而不是填充：不在填充上浪费计算，损失不变。",
                             label="Padding-free batches", label_zh="无填充批次")
    fused_loss: bool = opt(True, "Compute the loss in chunks straight from the last hidden states, so the "
                                  "logits of a large vocabulary are never held whole in memory.",
                           "直接从最后的隐藏状态分块计算损失，大词表的 logits 不会整体驻留内存。",
                           label="Fused loss", label_zh="融合损失")
    liger_kernels: bool = opt(False, "Liger's Triton kernels on a CUDA GPU: fused RMSNorm, SwiGLU and rotary "
                                      "embedding, and Liger's fused loss. Needs `pip install liger-kernel`; "
                                      "elsewhere PyTorch's kernels run.",
                              "在 CUDA GPU 上使用 Liger 的 Triton 内核：融合的 RMSNorm、SwiGLU、旋转位置编码和 Liger "
                              "融合损失。需要 `pip install liger-kernel`；否则使用 PyTorch 自带内核。",
                              label="Liger kernels", label_zh="Liger 内核")
    logging_steps: int = opt(1, "Write metrics every N optimizer steps.", "每 N 个优化步记录一次指标。",
                             label="Log every", label_zh="记录间隔", min=1, max=MAX_STEPS)
    eval_steps: int = opt(0, "Evaluate every N steps (0 = at the end of each epoch when there is an eval split).",
                          "每 N 步评估一次（0 = 有评估集时每轮结束评估）。", label="Eval every", label_zh="评估间隔",
                          min=0, max=MAX_STEPS)
    save_steps: int = opt(0, "Save a checkpoint every N steps (0 = only when stopped or finished).",
                          "每 N 步保存检查点（0 = 仅在停止或结束时保存）。", label="Save every", label_zh="保存间隔",
                          min=0, max=MAX_STEPS)


@dataclass
class NodeOptions:
    count: int = opt(1, "Machines taking part in the run. Above 1, each machine runs the torchrun command "
                        "shown for its node rank; Start runs node 0 here.",
                     "参与训练的机器数。大于 1 时，每台机器运行与其节点序号对应的 torchrun 命令；“开始训练”在本机运行节点 0。",
                     label="Nodes", label_zh="节点数", min=1, max=1024)
    host: str = opt("", "Rendezvous host: the address of node 0 that every node can reach (needed with "
                        "several nodes).",
                    "会合主机：所有节点都能访问的节点 0 地址（多节点时必填）。",
                    label="Rendezvous host", label_zh="会合主机")
    port: int = opt(29500, "Rendezvous port on node 0; open it in that machine's firewall.",
                    "节点 0 上的会合端口；需在该机防火墙上放行。", label="Rendezvous port", label_zh="会合端口",
                    min=1, max=65535)


@dataclass
class RunConfig:
    model: str = opt(EMBEDDED_MODEL, "Hub id, local folder, .gguf file, or the embedded default.",
                     "Hub 模型 ID、本地文件夹、.gguf 文件或内置默认模型。", label="Model", label_zh="模型")
    method: str = opt("lora", "lora: small adapters on a frozen model. qlora: the same on a 4-bit model "
                              "(about 4x less weight memory). full: train every weight. freeze: train the "
                              "last layers only.",
                      "lora：在冻结模型上训练小适配器。qlora：同上但模型为 4 位（权重显存约减 4 倍）。"
                      "full：训练全部权重。freeze：只训练最后几层。",
                      label="Method", label_zh="方法", choices=list(METHODS))
    datasets: list = opt([], "Data files or saved dataset names.", "数据文件或已保存的数据集名称。",
                         label="Datasets", label_zh="数据集")
    output_dir: str = opt("", "Run folder; the adapter lands in <output_dir>/adapter. Empty: "
                              "<workspace>/runs/<run id>.",
                          "运行目录；适配器保存在 <output_dir>/adapter。留空：<工作区>/runs/<运行 ID>。",
                          label="Output folder", label_zh="输出目录")
    name: str = opt("", "A name for the run (shown in the Runs list).", "运行名称（显示在运行列表中）。",
                    label="Run name", label_zh="运行名称")
    trust_remote_code: bool = opt(False, "Run Python code shipped with a hub model. Only for models you trust.",
                                  "运行模型仓库自带的 Python 代码。仅用于你信任的模型。",
                                  label="Trust remote code", label_zh="信任远程代码")
    gpus: str = opt("auto", "Devices of each machine: auto (the first GPU, else the CPU), all (every GPU), "
                            "GPU numbers such as 0,1,3, cpu, or cpu:N (N processes on the CPU). Several "
                            "devices run one process each through torchrun: DDP for LoRA/QLoRA, FSDP for "
                            "full and freeze tuning.",
                    "每台机器使用的设备：auto（第一张 GPU，没有则用 CPU）、all（全部 GPU）、GPU 编号如 0,1,3、"
                    "cpu，或 cpu:N（在 CPU 上运行 N 个进程）。多个设备时由 torchrun 每个设备启动一个进程："
                    "LoRA/QLoRA 用 DDP，全量与冻结微调用 FSDP。",
                    label="GPUs", label_zh="GPU")
    nodes: NodeOptions = section(NodeOptions, "Several machines (torchrun static rendezvous).",
                                 "多台机器（torchrun 静态会合）。")
    lora: LoraOptions = section(LoraOptions, "LoRA adapter options.", "LoRA 适配器选项。")
    quant: QuantOptions = section(QuantOptions, "QLoRA quantization options.", "QLoRA 量化选项。")
    freeze: FreezeOptions = section(FreezeOptions, "Freeze-tuning options.", "冻结微调选项。")
    data: DataOptions = section(DataOptions, "How samples are built.", "样本构建方式。")
    train: TrainOptions = section(TrainOptions, "Optimisation options.", "优化选项。")

    # ---- conversions ------------------------------------------------------------------------

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["datasets"] = [_compact_dataset(s) for s in self.datasets]
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def save(self, path: str | Path) -> None:
        from core.workspace import atomic_write_text
        atomic_write_text(path, self.to_yaml())

    @classmethod
    def from_dict(cls, data: dict, *, file: str | None = None, lines: dict | None = None) -> "RunConfig":
        cfg = _build(cls, data, "", file, lines or {})
        validate(cfg, file=file, lines=lines or {})
        return cfg

    @classmethod
    def from_yaml(cls, text: str, *, file: str | None = None, overrides: list[str] | None = None) -> "RunConfig":
        data, lines = parse_yaml_with_lines(text, file)
        overridden = [apply_override(data, item) for item in overrides or []]
        for key in overridden:
            lines.pop(key, None)
        try:
            return cls.from_dict(data, file=file, lines=lines)
        except ConfigError as e:        # a value typed after the file is not the file's fault
            if e.field and any(e.field == k or e.field.startswith(k + ".") for k in overridden):
                e.file, e.line = "command line", None
            raise

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] | None = None) -> "RunConfig":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError("config file not found", file=str(path)) from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read the config file ({e})", file=str(path)) from None
        return cls.from_yaml(text, file=str(path), overrides=overrides)

    def with_overrides(self, overrides: list[str]) -> "RunConfig":
        data = self.to_dict()
        for item in overrides:
            apply_override(data, item)
        return RunConfig.from_dict(data)

    def is_adapter_method(self) -> bool:
        return self.method in ("lora", "qlora")

    def upcasts_unquantized(self) -> bool:
        """QLoRA with the weights it leaves unquantized cast to fp32 (peft's prepare_model_for_kbit_training)."""
        return self.method == "qlora" and self.quant.upcast_unquantized


def _compact_dataset(spec: DatasetSpec):
    d = dataclasses.asdict(spec)
    if spec.ratio is None and spec.format == "auto" and not spec.columns:
        return spec.path
    return {k: v for k, v in d.items() if v not in (None, {}, "auto") or k == "path"}


# ---- field introspection (used by the form, the CLI and validation) ---------------------------

def field_meta(dotted: str) -> dict:
    """Metadata of a field by dotted name, e.g. 'lora.rank'; 'datasets.ratio' is a dataset's."""
    cls = RunConfig
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        f = {f.name: f for f in dataclasses.fields(cls)}[part]
        if i == len(parts) - 1:
            return dict(f.metadata)
        cls = DatasetSpec if (cls, part) == (RunConfig, "datasets") else _hints(cls)[part]
    raise KeyError(dotted)


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


# ---- YAML with line numbers ------------------------------------------------------------------

def parse_yaml_with_lines(text: str, file: str | None) -> tuple[dict, dict]:
    """Parse YAML and remember the line of every key, so errors can point at it."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        lines: dict[str, int] = {}
        _collect_lines(node, "", lines, set(), file)      # refuses aliases before anything expands them
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else None
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"not valid YAML: {problem}", file=file, line=line) from None
    except RecursionError:
        raise ConfigError("not valid YAML: nested too deeply", file=file) from None
    except ValueError as e:             # e.g. an integer of more digits than Python converts
        raise ConfigError(f"not valid YAML: {e}", file=file) from None
    if data is None and file:
        raise ConfigError("the config file holds no settings (it is empty or only comments)", file=file)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("the config must be a mapping of keys to values", file=file, line=1)
    return data, lines


def _collect_lines(node, prefix: str, lines: dict, seen: set, file) -> None:
    """Each key's line. A node met twice is an alias (*name): refused, since a few nested ones
    expand to billions of values."""
    if id(node) in seen:
        raise ConfigError("YAML aliases (*name) are not supported in a config; write the value out",
                          field=prefix.rstrip(".") or None, file=file, line=node.start_mark.line + 1)
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            name = f"{prefix}{key_node.value}"
            line = key_node.start_mark.line + 1
            if name in lines:           # YAML keeps the last silently; the first is what the user sees
                raise ConfigError(f"given twice (lines {lines[name]} and {line}); keep one", field=name, file=file,
                                  line=line)
            lines[name] = line
            _collect_lines(value_node, name + ".", lines, seen, file)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            name = f"{prefix}{i}"
            lines[name] = item.start_mark.line + 1
            _collect_lines(item, name + ".", lines, seen, file)


def apply_override(data: dict, item: str) -> str:
    """Apply one `dotted.key=value` override; the value is read as YAML (3, 2e-4, true, [a, b]).
    Returns the dotted key."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' is not of the form key=value", field=item)
    key, raw = item.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except (yaml.YAMLError, ValueError, RecursionError):
        value = raw
    target = data
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(target.get(part), dict):
            target[part] = {}
        target = target[part]
    target[parts[-1]] = value
    return key


# ---- building and checking -------------------------------------------------------------------

def _build(cls, data, prefix: str, file, lines):
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping, got {_show(data)}", field=prefix.rstrip(".") or None,
                          file=file, line=lines.get(prefix.rstrip(".")))
    hints = _hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in known:
            close = difflib.get_close_matches(str(key), list(known), n=1)
            hint = f"did you mean '{prefix + close[0]}'?" if close else f"known keys: {', '.join(known)}"
            raise ConfigError("unknown key", field=dotted, file=file, line=lines.get(dotted), hint=hint)
        values[key] = _coerce(hints[key], value, dotted, file, lines)
    return cls(**values)


def _coerce(tp, value, dotted, file, lines):
    line = lines.get(dotted)
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, dotted, file, lines)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value if value is not None else {}, dotted + ".", file, lines)
    if dotted == "datasets":
        return _coerce_datasets(value, file, lines)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"expected true or false, got {_show(value)}", field=dotted, file=file, line=line)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"expected a whole number, got {_show(value)}", field=dotted, file=file, line=line)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"expected a number, got {_show(value)}", field=dotted, file=file, line=line)
    if tp is str:
        if isinstance(value, list) and dotted.endswith("target_modules"):
            return ",".join(str(v) for v in value)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"expected text, got {_show(value)}", field=dotted, file=file, line=line)
    if tp is dict:
        if value is None:
            return {}
        if isinstance(value, dict):
            return {str(k): str(v) for k, v in value.items()}
        raise ConfigError(f"expected a mapping, got {_show(value)}", field=dotted, file=file, line=line)
    return value


def _coerce_datasets(value, file, lines) -> list[DatasetSpec]:
    if value is None:
        return []
    if isinstance(value, (str, dict)):
        value = [value]
    if not isinstance(value, list):
        raise ConfigError(f"expected a list of files or dataset names, got {_show(value)}",
                          field="datasets", file=file, line=lines.get("datasets"))
    specs = []
    for i, item in enumerate(value):
        dotted = f"datasets.{i}"
        if isinstance(item, str):
            specs.append(DatasetSpec(path=item))
        elif isinstance(item, dict):
            specs.append(_build(DatasetSpec, item, dotted + ".", file, lines))
        else:
            raise ConfigError(f"expected a file, a name or a mapping, got {_show(item)}",
                              field=dotted, file=file, line=lines.get(dotted))
    return specs


def _show(value) -> str:
    if isinstance(value, str):
        return f"'{value}'" if len(value) <= 80 else f"'{value[:60]}...' ({len(value)} characters)"
    if value is None:
        return "nothing"
    return f"{type(value).__name__} {value!r}" if isinstance(value, (list, dict)) else repr(value)


def _check_bounds(obj, prefix: str, file, lines) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        dotted = f"{prefix}{f.name}"
        meta = f.metadata
        if meta.get("section"):
            _check_bounds(value, dotted + ".", file, lines)
            continue
        if value is None:
            continue
        line = lines.get(dotted)
        choices = meta.get("choices")
        if choices and value not in choices:
            raise ConfigError(f"'{value}' is not one of: {', '.join(map(str, choices))}",
                              field=dotted, file=file, line=line)
        lo, hi = meta.get("min"), meta.get("max")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{value} is not a finite number", field=dotted, file=file, line=line)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if lo is not None and (value < lo or (meta.get("min_exclusive") and value == lo)):
                rule = f"greater than {lo}" if meta.get("min_exclusive") else f"at least {lo}"
                raise ConfigError(f"{value} is too small: must be {rule}", field=dotted, file=file, line=line)
            if hi is not None and value > hi:
                raise ConfigError(f"{value} is too large: must be at most {hi}", field=dotted, file=file,
                                  line=line)


def validate(cfg: RunConfig, *, file: str | None = None, lines: dict | None = None) -> None:
    """Check every bound and the rules that tie fields together. Raises ConfigError."""
    lines = lines or {}
    _check_bounds(cfg, "", file, lines)
    for i, spec in enumerate(cfg.datasets):
        _check_bounds(spec, f"datasets.{i}.", file, lines)
        if not spec.path.strip():
            raise ConfigError("dataset path is empty", field=f"datasets.{i}.path", file=file,
                              line=lines.get(f"datasets.{i}"))
    if not cfg.model.strip():
        raise ConfigError("no model given", field="model", file=file, line=lines.get("model"))
    targets = [t.strip() for t in cfg.lora.target_modules.split(",") if t.strip()]
    if not targets:
        raise ConfigError("name at least one target module, or all-linear", field="lora.target_modules",
                          file=file, line=lines.get("lora.target_modules"))
    ratios = [s.ratio for s in cfg.datasets]
    if any(r is not None for r in ratios) and any(r is None for r in ratios):
        raise ConfigError("give a mix ratio to every dataset, or to none", field="datasets", file=file,
                          line=lines.get("datasets"))
    _check_devices(cfg, file, lines)


def _check_devices(cfg: RunConfig, file, lines) -> None:
    from core.devices import check

    problem = check(cfg.gpus)
    if problem:
        raise ConfigError(f"'{cfg.gpus}' is not a device choice: {problem}", field="gpus", file=file,
                          line=lines.get("gpus"))
    if cfg.nodes.count > 1 and not cfg.nodes.host.strip():
        raise ConfigError("several nodes need the rendezvous host (the address of node 0)", field="nodes.host",
                          file=file, line=lines.get("nodes.host") or lines.get("nodes"))
