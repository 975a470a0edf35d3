"""Generate the next reply of a dialogue with MemBART, the memory carried over all its previous turns.

    python examples/finetune_dialog/generate.py --model runs/dialog \
        --data examples/finetune_dialog/data/sample_dialogs.json --dialogue sample_0 --upto 16 [--no-memory]

The encoder walks the dialogue exactly as training did (dialog_data.py): one example per turn, each reading the last
`context_turns` turns and updating the memory; the last example reads the newest turns plus the prompt `role:` of
the speaker who answers, and the decoder generates from it and the memory. `--no-memory` starts that last example
from a reset memory instead: the difference is what the memory remembers. Needs only torch and transformers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))  # dialog_data beside this file, however this is started
from dialog_data import DialogDataError, encode_source, load_dialogues, source_text  # noqa: E402

SETTINGS_FILE = "dialog_finetune.json"  # written by train.py next to the finetuned model
DEFAULTS = {"context_turns": 1, "max_source_len": 128}


def load_model(path: str | Path, dtype: torch.dtype = torch.float32):
    """An exported or finetuned MemBART directory, through its own code (`trust_remote_code`), and its tokenizer."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path} has no config.json: pass a directory written by pretrain/export_hf.py "
            f"or by this example's train.py"
        )
    model = AutoModelForSeq2SeqLM.from_pretrained(str(path), trust_remote_code=True, dtype=dtype)
    if not hasattr(model, "construct_memory"):
        raise ValueError(f"{path} holds a {type(model).__name__}, not a MemBART (no construct_memory)")
    # trust_remote_code: AutoTokenizer reads config.json too, whose model type only the code in `path` defines
    return model, AutoTokenizer.from_pretrained(str(path), trust_remote_code=True)


def dialog_settings(path: str | Path) -> dict:
    """How the model at `path` was finetuned (context window, source length), or the defaults."""
    file = Path(path) / SETTINGS_FILE
    saved = json.loads(file.read_text()) if file.is_file() else {}
    return {key: saved.get(key, value) for key, value in DEFAULTS.items()}


def _source(tokenizer, text: str, max_source_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([encode_source(tokenizer, text, max_source_len)], device=device)
    return ids, torch.ones_like(ids, dtype=torch.bool)


@torch.no_grad()
def encode_dialogue(
    model,
    tokenizer,
    turns: list[dict],
    next_role: str,
    *,
    use_memory: bool = True,
    context_turns: int = 1,
    max_source_len: int = 128,
):
    """The encoder outputs from which the reply to `turns` is decoded (their `memory_states` included).

    With `use_memory`, examples 1 … n-1 of the dialogue run first, each updating the memory, as in training;
    without, the last example starts from a reset memory."""
    encoder = model.get_encoder()
    device = next(model.parameters()).device
    memory = model.construct_memory(1)
    if use_memory:
        for k in range(1, len(turns)):
            ids, mask = _source(tokenizer, source_text(turns, k, context_turns), max_source_len, device)
            memory = encoder(
                input_ids=ids,
                attention_mask=mask,
                memory_states=memory,
                memory_resets=torch.tensor([k == 1], device=device),
            ).memory_states
    ids, mask = _source(tokenizer, source_text(turns, len(turns), context_turns, next_role), max_source_len, device)
    return encoder(
        input_ids=ids,
        attention_mask=mask,
        memory_states=memory,
        memory_resets=torch.tensor([not use_memory], device=device),
    )


def default_next_role(turns: list[dict]) -> str:
    """Speakers alternate: the next speaker is the one before the last turn."""
    if len(turns) < 2:
        raise DialogDataError("give the replying speaker (--role) for a dialogue of fewer than 2 turns")
    return turns[-2]["role"]


@torch.no_grad()
def generate_reply(
    model,
    tokenizer,
    turns: list[dict],
    *,
    next_role: str | None = None,
    use_memory: bool = True,
    context_turns: int = 1,
    max_source_len: int = 128,
    max_new_tokens: int = 40,
    num_beams: int = 1,
) -> str:
    """The next turn's text after `turns`, decoded greedily (or with beams) with the memory of the dialogue."""
    model.eval()
    encoded = encode_dialogue(
        model,
        tokenizer,
        turns,
        next_role or default_next_role(turns),
        use_memory=use_memory,
        context_turns=context_turns,
        max_source_len=max_source_len,
    )
    # max_length counts the decoder start token: this is max_new_tokens (without clashing with the saved config's
    # max_length, which transformers warns about)
    output = model.generate(
        encoder_outputs=encoded, max_length=max_new_tokens + 1, num_beams=num_beams, do_sample=False
    )
    return tokenizer.decode(output[0], skip_special_tokens=True).strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="finetuned (or exported) MemBART directory")
    parser.add_argument("--data", required=True, help="dialogue JSON file (the reference format)")
    parser.add_argument("--dialogue", help="dial_id (default: the file's first dialogue)")
    parser.add_argument("--upto", type=int, help="reply after this many turns (default: all but the last)")
    parser.add_argument("--role", help="the replying speaker (default: alternate)")
    parser.add_argument("--no-memory", action="store_true", help="reset the memory before the reply")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--num-beams", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        dialogues = load_dialogues(args.data)
        dial_id = args.dialogue or next(iter(dialogues))
        if dial_id not in dialogues:
            raise DialogDataError(f"{args.data} has no dialogue {dial_id!r} (first ones: {list(dialogues)[:5]})")
        turns = dialogues[dial_id]
        upto = args.upto if args.upto is not None else len(turns) - 1
        if not 1 <= upto <= len(turns):
            raise DialogDataError(f"--upto must be in 1..{len(turns)} for dialogue {dial_id!r}")
        model, tokenizer = load_model(args.model)
    except (DialogDataError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    history = turns[:upto]
    for turn in history[-4:]:
        print(f"{turn['role']}: {turn['text']}")
    role = args.role or default_next_role(history)
    reply = generate_reply(
        model,
        tokenizer,
        history,
        next_role=role,
        use_memory=not args.no_memory,
        max_new_tokens=args.max_new_tokens,
        num_beams=args.num_beams,
        **dialog_settings(args.model),
    )
    print(f"{role} (generated{', no memory' if args.no_memory else ''}): {reply}")
    if upto < len(turns):
        print(f"{turns[upto]['role']} (reference): {turns[upto]['text']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
