"""auto-BLEU, NLTK-style word tokens, GenPPL aggregation and transcript NLL on a tiny offline LM + tokenizer."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from tokenizers import Tokenizer, models, pre_tokenizers, processors  # noqa: E402
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM  # noqa: E402

from slam_core.eval.pairs import CheckpointNotFoundError  # noqa: E402
from slam_core.eval.text_metrics import (  # noqa: E402
    auto_bleu, genppl, load_ppl_lm, mean_auto_bleu, transcript_nll, word_tokens,
)

WORDS = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "the": 4, "cat": 5, "sat": 6, ".": 7}
V = len(WORDS)


def test_word_tokens_follow_nltk_treebank_examples() -> None:
    # NLTK's own TreebankWordTokenizer doctests (NLTKWordTokenizer gives the same on these)
    text = "Good muffins cost $3.88\nin New York.  Please buy me\ntwo of them.\nThanks."
    assert word_tokens(text) == ["Good", "muffins", "cost", "$", "3.88", "in", "New", "York.", "Please", "buy",
                                 "me", "two", "of", "them.", "Thanks", "."]
    assert word_tokens("They'll save and invest more.") == ["They", "'ll", "save", "and", "invest", "more", "."]
    assert word_tokens("hi, my name can't hello,") == ["hi", ",", "my", "name", "ca", "n't", "hello", ","]
    assert word_tokens('She said "well-known" (1,000 cats)?') == [
        "She", "said", "``", "well-known", "''", "(", "1,000", "cats", ")", "?"]


# Each case SlamKit's tokenizer (NLTKWordTokenizer) handles and a regex port of the Treebank rules got wrong;
# the expected tokens are worked out from NLTK's rule tables (CONTRACTIONS2/3, STARTING_QUOTES, PUNCTUATION,
# ENDING_QUOTES), not read back from the code under test.
SLAMKIT_TOKEN_CASES = {
    "contractions": ("I cannot go gonna wanna gotta", ["I", "can", "not", "go", "gon", "na", "wan", "na", "got", "ta"]),
    "'tis": ("'tis fine", ["'", "tis", "fine"]),
    "curly quotes": ("He said \u201cyes\u201d and \u2018no\u2019", ["He", "said", "\u201c", "yes", "\u201d", "and", "\u2018", "no", "\u2019"]),
    "curly apostrophe": ("don\u2019t", ["don", "\u2019", "t"]),
    "backticks and ''": ("``Hi'' and `x' here", ["``", "Hi", "''", "and", "`", "x", "'", "here"]),
    "runs of dots": ("so... so.. so.... so.", ["so", "...", "so", "..", "so", "....", "so", "."]),
    "leading apostrophes": ("'cause 'em", ["'", "cause", "'", "em"]),
    "clitics before newline": ("it's\nhe'll\nwe're", ["it", "'s", "he", "'ll", "we", "'re"]),
}


@pytest.mark.parametrize("case", sorted(SLAMKIT_TOKEN_CASES))
def test_word_tokens_are_nltks_on_the_cases_a_port_got_wrong(case: str) -> None:
    text, expected = SLAMKIT_TOKEN_CASES[case]
    assert word_tokens(text) == expected


def test_auto_bleu_hand_computed() -> None:
    assert auto_bleu("the cat sat on the cat") == pytest.approx(2 / 5)   # "the cat" at positions 0 and 4
    assert auto_bleu("a a a") == 1.0
    assert auto_bleu("hello") == 0.0 and auto_bleu("") == 0.0 and auto_bleu("   ") == 0.0
    # tokens: I do n't know , I do n't know .  -> 9 bigrams, 6 of them repeated
    assert auto_bleu("I don't know, I don't know.") == pytest.approx(6 / 9)
    assert auto_bleu("a b a b", n=3) == 0.0 and auto_bleu("a b a b a", n=3) == pytest.approx(2 / 3)
    # I can not go , I can not go: 8 bigrams, "I can", "can not", "not go" twice each -> 6/8 ("cannot" whole: 4/6)
    assert auto_bleu("I cannot go, I cannot go") == pytest.approx(6 / 8)
    # we got ta go we got ta go: 7 bigrams, all but "go we" repeated -> 6/7
    assert auto_bleu("we gotta go we gotta go") == pytest.approx(6 / 7)
    # so ... so .. so: bigrams "so ...", "... so", "so ..", ".. so" all distinct -> 0
    assert auto_bleu("so... so.. so") == 0.0
    # it 's it 's: 3 bigrams "it 's", "'s it", "it 's" -> 2/3
    assert auto_bleu("it's\nit's") == pytest.approx(2 / 3)


def test_corpus_auto_bleu_counts_empty_transcripts_as_zero() -> None:
    # SlamKit: the mean of calc_auto_bleu over every transcript; an empty one has no bigram and scores 0
    assert mean_auto_bleu(["a a a", "hello"]) == pytest.approx(0.5)
    assert mean_auto_bleu(["a a a", ""]) == pytest.approx(0.5)
    assert mean_auto_bleu(["a a a", "", " ", "a b a b"]) == pytest.approx((1 + 0 + 0 + 2 / 3) / 4)
    assert mean_auto_bleu([]) is None


def test_genppl_is_exp_of_mean_of_per_sample_means() -> None:
    out = genppl([1.0, 3.0, None])
    assert out["genppl"] == pytest.approx(math.exp(2.0))   # not token-weighted, not mean of exp
    assert (out["n"], out["n_empty"]) == (2, 1) and "1 empty transcript" in out["note"]
    nothing = genppl([None, None])
    assert nothing["genppl"] is None and "undefined" in nothing["note"]
    assert genppl([float("nan"), 0.5])["genppl"] == pytest.approx(math.exp(0.5))
    assert genppl([])["genppl"] is None


def _tiny_ppl_dir(out_dir: Path) -> tuple[str, str]:
    """Tokenizer (WordLevel, '<s> $A') + a Qwen2 whose logits are a bigram table: BOS -> 'the' with p = 1/2,
    every other next-token distribution uniform over the V tokens."""
    tok = Tokenizer(models.WordLevel(WORDS, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")
    hidden = 16
    cfg = Qwen2Config(vocab_size=V, hidden_size=hidden, intermediate_size=16, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False, rms_norm_eps=1e-12)
    model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():
        model.model.layers[0].self_attn.o_proj.weight.zero_()
        model.model.layers[0].mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.copy_(torch.eye(V, hidden))
        model.lm_head.weight.zero_()
        # logit ln(V-1) on 'the' after BOS: p = (V-1) / (2V-2) = 1/2
        model.lm_head.weight[WORDS["the"], WORDS["<s>"]] = math.log(V - 1) / math.sqrt(hidden)
    model.save_pretrained(out_dir / "model")
    fast.save_pretrained(out_dir / "tokenizer")
    return str(out_dir / "model"), str(out_dir / "tokenizer")


def test_transcript_nll_hand_computed(tmp_path: Path) -> None:
    model_dir, tokenizer_dir = _tiny_ppl_dir(tmp_path)
    lm, tokenizer = load_ppl_lm(model_dir, device="cpu", tokenizer_dir=tokenizer_dir)
    nll = transcript_nll(lm, tokenizer, ["the", "the cat", "", "  ", "cat sat ."], batch_size=2)
    assert nll[0] == pytest.approx(math.log(2), abs=1e-4)                          # p(the|<s>) = 1/2
    assert nll[1] == pytest.approx((math.log(2) + math.log(V)) / 2, abs=1e-4)      # then uniform
    # "" has no token; "  " is scored, but this whitespace pre-tokenizer turns it into BOS alone: nothing to score
    assert nll[2] is None and nll[3] is None
    # 'cat' after BOS: 1/(2V-2); 'sat', '.': uniform 1/V
    assert nll[4] == pytest.approx((math.log(2 * V - 2) + 2 * math.log(V)) / 3, abs=1e-4)
    assert genppl(nll)["genppl"] == pytest.approx(math.exp((nll[0] + nll[1] + nll[4]) / 3))


def test_whitespace_only_transcript_is_scored_like_slamkit(tmp_path: Path) -> None:
    # Llama's byte-level tokenizer turns " " into a token, so SlamKit scores a whitespace-only transcript; here a
    # tokenizer that keeps spaces as (unknown) tokens: "  " -> <s> <unk> <unk>
    model_dir, tokenizer_dir = _tiny_ppl_dir(tmp_path)
    lm, tokenizer = load_ppl_lm(model_dir, device="cpu", tokenizer_dir=tokenizer_dir)
    tokenizer._tokenizer.pre_tokenizer = pre_tokenizers.Split(" ", "isolated")
    assert tokenizer("  ")["input_ids"] == [WORDS["<s>"], WORDS["<unk>"], WORDS["<unk>"]]
    nll = transcript_nll(lm, tokenizer, ["  ", ""])
    # <unk> after BOS: 1/(2V-2) (BOS puts 1/2 on 'the'); then uniform 1/V
    assert nll[0] == pytest.approx((math.log(2 * V - 2) + math.log(V)) / 2, abs=1e-4)
    assert nll[1] is None
    out = genppl(nll)
    assert out["genppl"] == pytest.approx(math.exp(nll[0])) and (out["n"], out["n_empty"]) == (1, 1)


def test_transcript_nll_without_bos_scores_from_the_second_token_as_slamkit(tmp_path: Path) -> None:
    """A tokenizer that adds no BOS: SlamKit's calc_nll scores from the second token (the first word is context
    only); eval.genppl_bos=prepend puts BOS first so that every word is a target."""
    model_dir, tokenizer_dir = _tiny_ppl_dir(tmp_path)
    lm, tokenizer = load_ppl_lm(model_dir, device="cpu", tokenizer_dir=tokenizer_dir)
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(single="$A")
    assert tokenizer("the cat")["input_ids"] == [WORDS["the"], WORDS["cat"]]
    slamkit, prepended = (transcript_nll(lm, tokenizer, ["the", "the cat"], prepend_bos=p) for p in (False, True))
    assert slamkit[0] is None and slamkit[1] == pytest.approx(math.log(V), abs=1e-4)  # only 'cat', uniform after 'the'
    assert prepended[0] == pytest.approx(math.log(2), abs=1e-4)                       # p(the|<s>) = 1/2
    assert prepended[1] == pytest.approx((math.log(2) + math.log(V)) / 2, abs=1e-4)


def test_missing_ppl_lm_names_hub_id() -> None:
    with pytest.raises(CheckpointNotFoundError, match="meta-llama/Llama-3.2-1B"):
        load_ppl_lm("meta-llama/Llama-3.2-1B", device="cpu")
