"""Which of llama.cpp's pre-tokenizers (`tokenizer.ggml.pre`) a byte-level BPE tokenizer needs.

First by behaviour on the whole vocabulary, as llama.cpp's own converter does: the token ids of a
fixed probe text, hashed, name the tokenizer family (the probe text and the hash-to-name facts
are llama.cpp's, from convert_hf_to_gguf.py of the vendored llama.cpp). A vocabulary of its own
(a user's domain tokenizer, the demo's) has no known hash; then the pre-tokenizer's splits of the
probe are compared with the splits each llama.cpp pre-type makes. Neither naming it is an error
that asks for `--gguf-pre`, never a guess."""

from __future__ import annotations

import hashlib

from distill.core.errors import UserError

PROBE = ('\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n\U0001f680 (normal) \U0001f636\u200d\U0001f32b\ufe0f '
         '(multiple emojis concatenated) \u2705 \U0001f999\U0001f999 3 33 333 3333 33333 333333 3333333 33333333 '
         '3.3 3..3 3...3 \u1780\u17b6\u1793\u17cb\u178f\u17c2\u1796\u17b7\u179f\u17c1\u179f\u17a2\u17b6\u1785'
         '\U0001f601 ?\u6211\u60f3\u5728apple\u5de5\u4f5c1314151\u5929\uff5e ------======= \u043d\u0435\u0449\u043e '
         '\u043d\u0430 \u0411\u044a\u043b\u0433\u0430\u0440\u0441\u043a\u0438 \'\'\'\'\'\'```````""""......!!!!!!'
         '?????? I\'ve been \'told he\'s there, \'RE you sure? \'M not sure I\'ll make it, \'D you like some tea? '
         'We\'Ve a\'lL')

# sha256 of str(token ids of PROBE) -> pre-tokenizer, for the names llama.cpp's vocabulary loader
# implements (where the converter lists a hash twice, its last name wins, as there).
FINGERPRINTS = {
    "b0a6b1c0bd5998ebd9df08611efde34a4ff03faed45ae09c43e6b31ebd4b94cf": "a.x-4.0",
    "49fc0303c9e0d2c2c565c510f64b2d9b271276acdcdadff733249eda9f7d59df": "afmoe",
    "96a5f08be6259352137b512d4157e333e21df7edd3fcd152990608735a65b224": "bailingmoe",
    "9b1be57e70d20d9501b2b3186e792d81181ae36ada3903c26f9fea418cf87206": "bailingmoe2",
    "3c30d3ad1d6b64202cd222813e7736c2db6e1bd6d67197090fc1211fbc612ae7": "bloom",
    "60824e3c0d9401f89943cbb2fff727f0e2d4c545ba4df2d6e4f09a6db0f5b450": "chameleon",
    "b6e8e1518dc4305be2fe39c313ed643381c4da5db34a98f6a04c093f8afbe99b": "chatglm-bpe",
    "81d72c7348a9f0ebe86f23298d37debe0a5e71149e29bd283904c02262b27516": "chatglm-bpe",
    "7b3e7548e4308f52a76e8229e4e6cc831195d0d1df43aed21ac6c93da05fec5f": "codeshell",
    "52df12b4c8d4176e7481aab4b6e8454d1fd0a210a04a574f6d4e067d10e23c3e": "cohere2moe",
    "9c2227e4dd922002fb81bde4fc02b0483ca4f12911410dee2255e4987644e3f8": "command-r",
    "a8594e3edff7c29c003940395316294b2c623e09894deebbc65f33f1515df79e": "dbrx",
    "347715f544604f9118bb75ed199f68779f423cabb20db6de6f31b908d04d7821": "deepseek-coder",
    "049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754": "deepseek-llm",
    "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5": "deepseek-r1-qwen",
    "877081d19cf6996e2c4ff0e1236341e9b7bde288f5311a56a937f0afbbb3aeb5": "deepseek-v3",
    "4e2b24cc4770243d65a2c9ec19770a72f08cffc161adbb73fcbb6b7dd45a0aae": "exaone",
    "6c81ce329e0802883b22eabab0d3fa48357337ef1ecb45443828bf1f6254833f": "exaone-moe",
    "2085e1638f6c377a0aa4ead21b27bb4cb941bf800df86ed391011769c1758dfb": "exaone4",
    "862f827721df956049dff5ca81a57f29e575280bc622e290d3bf4e35eca29015": "f2llmv2",
    "8aeee3860c56296a157a1fe2fad249ec40aa59b1bb5709f4ade11c4e6fe652ed": "falcon",
    "a6b57017d60e6edb4d88ecc2845188e0eb333a70357e45dcc9b53964a73bbae6": "falcon-h1",
    "60476e1243776c4fb1b993dbd7a5f15ac22f83c80afdf425fa5ae01c8d44ef86": "falcon-h1",
    "3eda48b4c4dc7de733d1a8b3e3b4a85243dbbf704da2ee9d42c6beced8897896": "falcon-h1",
    "48f8e02c0359c0bbdd82f26909171fac1c18a457bb47573ed1fe3bbb2c1cfd4b": "falcon-h1",
    "9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e": "falcon3",
    "846deafc5b0fa786186fa4ae6c7b49903cf2f1d1895bdb80b9120d60be135252": "gemma4",
    "ad851be1dba641f2e3711822f816db2c265f788b37c63b4e1aeacb9ee92de8eb": "gigachat",
    "a1336059768a55c99a734006ffb02203cd450fed003e9a71886c88acf24fdbc2": "glm4",
    "9ca2dd618e8afaf09731a7cf6e2105b373ba6a1821559f258b272fe83e6eb902": "glm4",
    "cdf5f35325780597efd76153d4d1c16778f766173908894c04afc20108536267": "glm4",
    "0fe1cf6eda062318a1af7270f3331a85c539a01778ff948e24388e949c5282f4": "gpt-2",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
    "ccc2ef013c104be7bae2965776d611e1d7a8a2a9c547dd93a682c9a9fc80352e": "gpt-4o",
    "bc01ce58980e1db43859146dc51b1758b3b88729b217a74792e9f8d43e479d21": "gpt3-finnish",
    "53e325976a6e142379c19b09afcae354f2f496f147afa8f9e189a33fe4e3024e": "granite-docling",
    "789696f5946cc0fc59371f39f6097cafed196b3acded6140432f26bbb1ae1669": "granite-embed-multi-311m",
    "f241072145675bf8322086f115aebad05e9f869557a238bf2150a2a417d1bf60": "granite-embed-multi-97m",
    "66b8d4e19ab16c3bfd89bce5d785fb7e0155e8648708a1f42077cb9fe002c273": "grok-2",
    "7e57df22b1fe23a7b1e1c7f3dc4e3f96d43a4eb0836d0c6bdc3436d7b2f1c664": "hunyuan",
    "bba3b3366b646dbdded5dbc42d59598b849371afc42f7beafa914afaa5b70aa6": "hunyuan-dense",
    "e6ddf9c6686791c12d698d34c31ab9be1fea9af5a3d9a6909783ab382198ae1c": "hy_v4",
    "b53802fb28e26d645c3a310b34bfe07da813026ec7c7716883404d5e0f8b1901": "jais",
    "bc5108ee1eb6a3d600cadd065f63190fbd0554dbc9e4bbd6a0d977970afc8d2a": "jais-2",
    "c7699093ba4255a91e702aa38a596aa81669f3525dae06c2953267dde580f448": "jina-v1-en",
    "7967bfa498ade6b757b064f31e964dddbb80f8f9a4d68d4ba7998fcf281c531a": "jina-v2-code",
    "b3d1dd861f1d4c5c0d2569ce36baf3f90fe8a102db3de50dd71ff860d91be3df": "jina-v2-de",
    "27949a2493fc4a9f53f5b9b029c82689cfbe5d3a1929bb25e043089e28466de6": "jina-v2-de",
    "171aeeedd6fb548d418a7461d053f11b6f1f1fc9b387bd66640d28a4b9f5c643": "jina-v2-es",
    "a023e9fdc5a11f034d3ef515b92350e56fb2af1f66c6b6811a4444ea9bf8763d": "jina-v5-nano",
    "b4b8ca1f9769494fbd956ebc4c249de6131fb277a4a3345a7a92c7dd7a55808d": "joyai-llm",
    "e4d54df1ebc1f2b91acd986c5b51aa50837d5faf7c7398e73c1f9e9ee5d19869": "kanana2",
    "81212dc7cdb7e0c1074ca62c5aeab0d43c9f52b8a737be7b12a777c953027890": "kimi-k2",
    "4a2e2abae11ca2b86d570fc5b44be4d5eb5e72cc8f22dd136a94b37da83ab665": "kormo",
    "972da7b59cec44d1f0a490a86c96df53859e486e481563e5dddac155013d87ac": "laguna",
    "9e454714343b69b99b71795c1d27a68c2a1d15dab111f4d353109f966af29da7": "lfm2",
    "169bf0296a13c4d9b7672313f749eb36501d931022de052aad6e36f2bf34dd51": "lfm2",
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "d353350c764d8c3b39c763113960e4fb4919bea5fbf208a0e3b22e8469dc7406": "llama4",
    "d4c8f286ea6b520b3d495c4455483cfa2302c0cfcd4be05d781b6a8a0a7cdaf1": "megrez",
    "a1e163ecab2e718a4c829d1148b6e86824ec36163bb71941c3dca9cd5ac25756": "mellum",
    "9dcf830ee9990cdbf78cc523a5f7bd9ad8f3f9890c2d3581d2785ad10f07049d": "mellum2",
    "f6791d196f87ce6b56a7d234be618e0d58f8cda3549416635b2bebcd22cd95c4": "midm-2.0",
    "1431a23e583c97432bc230bff598d103ddb5a1f89960c8f1d1051aaa944d0b35": "minerva-7b",
    "36f3066e97b7f3994b379aaacde306c1444c6ae84e81a5ae3cd2b7ed3b8c42d4": "minicpm5",
    "f4f37b6c8eb9ea29b3eac6bb8c8487c5ab7885f8d8022e67edc1c68ce8403e95": "minimax-m2",
    "a0b64b4385f123663873756336c085744376d015ff328bb1d901598f63c44152": "modern-bert",
    "b6dc8df998e1cfbdc4eac8243701a65afe638679230920b50d6f17d81c098166": "olmo",
    "fcace8b9cac38ce847670c970cd5892031a753a1ef381abd1d9af00f713da085": "phi-2",
    "0e9433cbbb161f89e264eb32e8e64bfe69e834973ffca5d41d3948a604a3e2a3": "pixtral",
    "c7ea5862a53e4272c035c8238367063e2b270d51faa48c0f09e9d5b54746c360": "poro-chat",
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
    "1444df51289cfa8063b96f0e62b1125440111bc79a52003ea14b6eac7016fd5f": "qwen35",
    "d30d75d9059f1aa2c19359de71047b3ae408c70875e8a3ccf8c5fba56c9d8af4": "qwen35",
    "6221ad2852e85ce96f791f476e0b390cf9b474c9e3d1362f53a24a06dc8220ff": "refact",
    "8b5a93ed704057481f240da0be7e7dca721d7f8f4755263b6807227a2cbeae65": "roberta-bpe",
    "62f6fb0a6fd5098caeabb19b07a5c1099cafc8b9c40eab6ea89ece4ec02fbc57": "sarvam-moe",
    "d5f1dd6f980fec569fb218a81a7658ac45fc56b38c5a0adeb1c232fbe04ef5ec": "seed-coder",
    "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d": "smaug-bpe",
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "16389f0a1f51ee53e562ffd51c371dc508639ab0e4261502071836e50e223e91": "solar-open",
    "0a766d034107bc736a3f2dc4968fd62e54a3570f1454443e0c5a4cc6bd7941ed": "spark2_5",
    "32d85c31273f8019248f2559fed492d929ea28b17e51d81d3bb36fff23ca72b3": "stablelm2",
    "35d91631860c815f952d711435f48d356ebac988362536bed955d43bfa436e34": "starcoder",
    "7dec86086fcc38b66b7bc1575a160ae21cf705be7718b9d5598190d7c12db76f": "superbpe",
    "f728162c1315c26e40249849799b4ba3fe584c32084b4795b03eb295e63cb5af": "talkie",
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",
    "d772b220ace2baec124bed8cfafce0ead7d6c38a4b65ef11261cf9d5d62246d1": "tiny_aya",
    "1994ffd01900cfb37395608534236ecd63f2bd5995d6cb1004dda1af50240f15": "trillion",
    "653660222fb704f61cbf2b618a8ae6502b7f8b20c980f9a5de07ed78e13319cd": "ufakzeka",
    "7fc505bd3104ca1083b150b17d088b59534ede9bde81f0dd2090967d7fe52cee": "viking",
    "9d70134b369a70e5735009b6de918f7581b5211f7c074d1f89f753aea8248af1": "youtu",
}
# Every name llama.cpp's loader accepts for a BPE vocabulary (what `--gguf-pre` may say).
PRE_TOKENIZERS = tuple(sorted(set(FINGERPRINTS.values()) | {
    "default", "glm5", "jina-de", "jina-es", "llada-moe", "llama-v3", "llama3", "mpt", "whitespace"}))

# How llama.cpp splits text for the pre-types a vocabulary of its own most likely copies: regexes
# applied in turn, each splitting every piece the previous ones left (text between matches stays
# a piece of its own). In order of preference where two split the probe alike.
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"


def _qwen_style(digits: str, letter: str, not_punct: str) -> str:
    return (_CONTRACTIONS + rf"|[^\r\n\p{{L}}\p{{N}}]?{letter}+|{digits}| ?[^\s{not_punct}\p{{N}}]+[\r\n]*"
            r"|\s*[\r\n]+|\s+(?!\S)|\s+")


SPLITS = {
    "qwen2": [_qwen_style(r"\p{N}", r"\p{L}", r"\p{L}")],
    "qwen35": [_qwen_style(r"\p{N}", r"[\p{L}\p{M}]", r"\p{L}\p{M}")],
    "llama-bpe": [_qwen_style(r"\p{N}{1,3}", r"\p{L}", r"\p{L}")],
    "deepseek-v3": [r"\p{N}{1,3}", "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
                    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
                    r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
    "deepseek-coder": [r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+", r"\p{N}"],
    "smollm": [r"\p{N}", _GPT2],
    "gpt-2": [_GPT2],
}
# Pre-types llama.cpp gives the same regexes as one of SPLITS (they differ in other ways: BOS,
# spaces when decoding).
SAME_SPLITS = {
    **dict.fromkeys(("deepseek-r1-qwen", "stablelm2", "kormo", "f2llmv2", "hunyuan", "solar-open", "grok-2"), "qwen2"),
    **dict.fromkeys(("llama3", "llama-v3", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano",
                     "dbrx", "smaug-bpe", "chatglm-bpe", "glm4", "glm5"), "llama-bpe"),
    **dict.fromkeys(("starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b", "mellum2"), "smollm"),
    **dict.fromkeys(("mpt", "olmo", "jais", "trillion", "granite-docling", "phi-2", "jina-es", "jina-de", "gigachat",
                     "jina-v2-es", "jina-v2-de", "a.x-4.0", "mellum", "modern-bert"), "gpt-2"),
    **dict.fromkeys(("hunyuan-dense", "joyai-llm", "hy_v4"), "deepseek-v3"),
}
# Extra text for the split comparison: what the probe lacks (upper-case contractions next to
# letters, digit runs after letters, tabs before words).
SPLIT_PROBE = PROBE + "\nDON'T x2024y\t\tword  'S 1,000.50 caf\u00e9 na\u00efve"
ASCII_DIGITS = set("0123456789")


def fingerprint(ids: list[int]) -> str:
    return hashlib.sha256(str(list(ids)).encode()).hexdigest()


def _llama_cpp_splits(text: str, regexes: list[str]) -> list[tuple[int, int]]:
    import regex
    pieces = [(0, len(text))]
    for pattern in regexes:
        compiled = regex.compile(pattern)
        out = []
        for start, end in pieces:
            position = start
            for match in compiled.finditer(text[start:end]):
                if match.end() == match.start():
                    continue
                if start + match.start() > position:
                    out.append((position, start + match.start()))
                out.append((start + match.start(), start + match.end()))
                position = start + match.end()
            if position < end:
                out.append((position, end))
        pieces = out
    return pieces


def _hf_splits(tokenizer, text: str) -> list[tuple[int, int]]:
    """The spans the tokenizer's pre-tokenizer cuts `text` (already normalized) into."""
    if tokenizer.pre_tokenizer is None:
        return [(0, len(text))]
    return [span for _, span in tokenizer.pre_tokenizer.pre_tokenize_str(text)]


def _digit_tokens_are_single(vocab) -> bool:
    """True when no token holds a digit next to any other character: the vocabulary was trained
    on text whose digits were split one by one (SmolLM, StarCoder)."""
    return not any(len(tok) > 1 and not ASCII_DIGITS.isdisjoint(tok) for tok in vocab)


def _normalized_probe(tokenizer) -> str:
    # Compared on the normalized text: a normalizer (Qwen's NFC) is not a way of splitting.
    return tokenizer.normalizer.normalize_str(SPLIT_PROBE) if tokenizer.normalizer else SPLIT_PROBE


def splits_like(tokenizer, name: str) -> bool:
    text = _normalized_probe(tokenizer)
    return _llama_cpp_splits(text, SPLITS[name]) == _hf_splits(tokenizer, text)


def pre_by_splits(tokenizer) -> str | None:
    for name in SPLITS:
        if splits_like(tokenizer, name):
            if name == "gpt-2" and _digit_tokens_are_single(tokenizer.get_vocab(with_added_tokens=False)):
                # Digits one by one or in runs give the same tokens when no token holds two
                # digits; llama.cpp calls such a vocabulary (SmolLM's) `smollm`.
                return "smollm"
            return name
    return None


def identify_pre_tokenizer(tokenizer, bos_id: int | None, where: str) -> tuple[str, str]:
    """(llama.cpp pre-tokenizer name, "fingerprint" or "splits") for a `tokenizers.Tokenizer`;
    `bos_id` is the id the HF tokenizer puts in front by default (llama.cpp's converter hashes
    the ids with it)."""
    plain = tokenizer.encode(PROBE, add_special_tokens=False).ids
    variants = [plain] if bos_id is None else [[bos_id, *plain], plain]
    known = next((FINGERPRINTS[h] for h in map(fingerprint, variants) if h in FINGERPRINTS), None)
    if known is not None:
        family = SAME_SPLITS.get(known, known)
        if family not in SPLITS or splits_like(tokenizer, family):
            return known, "fingerprint"
        # A known vocabulary whose tokenizer splits differently from its family's: the probe's
        # ids could not tell them apart (Qwen3.5's splitting on Qwen2's vocabulary), the splits can.
        found = pre_by_splits(tokenizer)
        return (found, "splits") if found else (known, "fingerprint")
    found = pre_by_splits(tokenizer)
    if found is not None:
        return found, "splits"
    raise UserError(f"{where}: pre-tokenizer not recognised (neither llama.cpp's fingerprint of its "
                    f"vocabulary nor its splits); name it with --gguf-pre (one of: {', '.join(PRE_TOKENIZERS)})")
