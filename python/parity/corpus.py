"""The parity corpus: inputs only. ``generate_fixtures.py`` adds DSPy's answers.

Each signature case may carry ``"native"``: ``"unsupported"`` marks a program
the native engine deliberately routes to Python (the router treats
``Unsupported`` as "run it in a worker"), whatever DSPy makes of it: the test
expects that error, or a signature with a type the engine does not run,
instead of DSPy's result.
"""

# ---------------------------------------------------------------- signatures
_ACCEPTED = [
    "question -> answer",
    "a->b",
    "a, a -> b",
    "question, context: list[str] -> answer",
    "a: int = 5 -> b",
    "a, /, b -> c",
    "*, a -> b",
    "*args, **kwargs -> b",
    "-> b",
    "a ->",
    "->",
    "a, -> b",
    "ｆｏｏ -> b",
    "é, naïve_field -> résumé",
    "match, case, type -> b",
    "\n a \n -> \n b \n",
    "a:int->b:float",
    "a: int, b: int = 3 -> c",
    "a: str = Field(description='x') -> b",
    "camelCaseText, HTMLParser, text2number, snake_case_text -> b",
    "x_1, y2z, getHTTPResponseCode, a2B -> ABC",
    "sentence -> sentiment: bool",
    "a -> b: int | None",
    "a -> b: None | int",
    "a -> b: Union[int]",
    "a -> b: Union[int, int]",
    "a -> b: str | int | None",
    "a -> b: float | None",
    "a: Optional[int] -> b: Optional[List[str]]",
    "a: typing.List[int] -> b: typing.Dict[str, int]",
    "a: Any -> b: Any",
    "a -> b: bytes",
    "a -> b: set[str]",
    "a -> b: frozenset[int]",
    "a -> b: tuple[int, str]",
    "a -> b: Tuple[int, ...]",
    "a -> b: tuple",
    "a -> b: NoneType",
    "a -> b: None",
    "a -> b: dict",
    "a -> b: list",
    "a -> b: Text",
    "a: dict[str, list[int]] -> b: dict[str, float]",
    "a -> b: Dict[str, Any]",
    "a -> b: list[dict[str, int]]",
    "a -> b: list[list[str]]",
    "a -> b: list[int | None]",
    "a -> b: Literal['a']",
    "a -> b: Literal[1, 2]",
    "a -> b: Literal[1, 'a']",
    "a -> b: Literal['x', \"y's\", 1, True, None]",
    "a -> b: Literal['both \\'single\\' and \"double\"']",
    "a -> b: list[Literal['x','y']]",
    "a -> b: Optional[Literal['x']]",
    "a -> b: Literal[True, False]",
    "a -> b: Union[Literal['a', 'b'], int]",
    "a -> b: list[bool]",
    "a -> b: dict[str, Optional[float]]",
    "a -> b: tuple[str, list[int], dict[str, bool]]",
    "a: dspy.History, question -> answer",
    "a: dspy.Image -> b",
    "a: list[dspy.Image] -> b",
    # pydantic constraints in the type: at the top pydantic lifts them off
    # the type (not shown, not checked on outputs); nested, they are part of
    # the type's name, JSON schema and validation.
    "q -> a: Annotated[int, Field(gt=0, lt=10)]",
    "q: Annotated[str, Field(min_length=3, description='the question')] -> a: Annotated[float, Field(ge=0.5)]",
    "q -> a: list[Annotated[int, Field(gt=0)]]",
    "q -> a: Optional[Annotated[int, Field(le=5)]]",
    "q -> a: dict[str, Annotated[int, Field(multiple_of=2)]]",
    "q -> a: list[Annotated[float, Field(lt=1.0, ge=1e-07, allow_inf_nan=False)]]",
    "q -> a: list[Annotated[str, Field(max_length=3, min_length=1)]]",
    'q -> a: list[Annotated[list[int], Field(min_length=1, description="it\'s\\n")]]',
    "q -> a: tuple[Annotated[set[str], Field(max_length=2)], Annotated[dict[str, int], Field(min_length=1)]]",
    "q -> a: Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=3)]",
    "q -> a: list[Annotated[bool, Field(description='flag')]]",
    "q -> a: list[Annotated[int, Field()]]",
    "q -> a: list[Annotated[tuple[int, ...], Field(min_length=2)]]",
    "q -> a: list[typing.Annotated[frozenset[int], Field(3, max_length=4)]]",
    "q -> a: Annotated[float, Field(gt=2.5e20)] | None",
]

_ACCEPTED_NATIVE_UNSUPPORTED = [
    "a -> b: dspy.Code",
    "a -> b: dspy.ToolCalls",
    "a: dspy.Tool -> b",
    "a -> b: dspy.Reasoning",
    "a -> b: complex",
    "a -> b: Sequence[str]",
    "q -> a: list[Annotated[int, Field(title='n')]]",
    "q -> a: list[Annotated[int, 'a note']]",
    "q -> a: list[Annotated[Optional[int], Field(gt=0)]]",
    "q -> a: list[Annotated[float, Field(description='fancy\u00a0space')]]",
    "q -> a: Annotated",
    "q -> a: list[Annotated[str, Field(gt=0)]]",
]

# DSPy (pydantic) rejects these when it builds the signature; the engine
# does not model pydantic's schema errors and leaves them to Python.
_REJECTED_NATIVE_UNSUPPORTED = [
    "q -> a: list[Annotated[int, Field(gt=0.5)]]",
    "q -> a: Annotated[int, Field(gt=2.5e20)] | None",
]

_REJECTED = [
    "",
    "a",
    "a -> b -> c",
    "a -> a",
    "a, b -> a, b",
    "q, ctx -> ctx, answer",
    "_a -> b",
    "a -> _b",
    "__private -> b",
    "a b -> c",
    "my-field -> b",
    "1abc -> b",
    "class -> b",
    "def -> b",
    "lambda -> b",
    "None -> b",
    ", a -> b",
    "a,,b -> c",
    "a: -> b",
    "a: int b -> c",
    "a: list[ -> b",
    "a: foo -> b",
    "a: np.ndarray -> b",
    "a -> b: Image",
    "a: 5 -> b",
    "a: 'hello' -> b",
    "a: 'int' -> b",
    "a: 1+2 -> b",
    "a: [int] -> b",
    "a: Literal[-1] -> b",
    "a: Optional[int, str] -> b",
    "a: List -> b",
    "a -> b: Tuple",
    "a -> b: Dict",
    "a -> b: Callable",
    "a -> b: TYPE_CHECKING",
    "a: int() -> b",
    "a: (int, str) -> b",
    "a: int.real -> b",
    "q -> a: Annotated[int, Field(gt=-1)]",
    "q -> a: Annotated[int, Field(gt=foo)]",
]

SIGNATURE_CASES = (
    [{"id": f"accept-{i:02d}", "signature": s} for i, s in enumerate(_ACCEPTED)]
    + [
        {"id": f"unsupported-{i:02d}", "signature": s, "native": "unsupported"}
        for i, s in enumerate(_ACCEPTED_NATIVE_UNSUPPORTED)
    ]
    + [{"id": f"reject-{i:02d}", "signature": s} for i, s in enumerate(_REJECTED)]
    + [
        {"id": f"reject-unsupported-{i:02d}", "signature": s, "native": "unsupported"}
        for i, s in enumerate(_REJECTED_NATIVE_UNSUPPORTED)
    ]
    + [
        {"id": "instructions-plain", "signature": "question -> answer", "instructions": "Answer briefly."},
        {
            "id": "instructions-indented",
            "signature": "question -> answer",
            "instructions": "  First line.\n      Indented more.\n    Less indented.\n\n\tTabbed line\n",
        },
        {"id": "instructions-empty", "signature": "a -> b", "instructions": ""},
        {"id": "instructions-unicode", "signature": "a -> b", "instructions": "Réponds en français. 答える。 🚀"},
    ]
)

# ---------------------------------------------------------------- format
_QA = "question -> answer"
_CLASS_STYLE = {
    "instructions": "Classify the sentiment of a review.\n\n    Be strict about sarcasm.\n    Return a confidence too.",
    "inputs": [
        {"name": "review", "type": "str", "desc": "The customer review"},
        {"name": "product", "type": "str"},
    ],
    "outputs": [
        {"name": "sentiment", "type": "Literal['positive', 'negative', 'neutral']", "desc": "Overall sentiment"},
        {"name": "confidence", "type": "float", "desc": "How sure you are", "constraints": {"ge": 0.0, "le": 1.0}},
        {"name": "keywords", "type": "list[str]", "constraints": {"min_length": 1, "max_length": 5}},
    ],
}
_HISTORY_SIG = "question: str, history: dspy.History -> answer"

FORMAT_CASES = [
    {
        "id": "constraints-in-types",
        "signature": "question: Annotated[str, Field(min_length=1)], hints: list[Annotated[str, Field(max_length=20)]]"
        " -> answer: Annotated[int, Field(ge=0)], steps: list[Annotated[str, Field(min_length=1, description='one step')]],"
        " scores: dict[str, Annotated[float, Field(gt=0, le=1.0)]] | None",
        "inputs": {"question": "What is 2 + 2?", "hints": ["add", "count"]},
        "demos": [
            {
                "question": "What is 1 + 1?",
                "hints": ["add"],
                "answer": 2,
                "steps": ["one plus one"],
                "scores": {"add": 0.5},
            }
        ],
    },
    {"id": "qa-simple", "signature": _QA, "inputs": {"question": "What is the capital of France?"}},
    {"id": "qa-multiline", "signature": _QA, "inputs": {"question": "Line one\nLine two\n\n  indented line\n"}},
    {"id": "qa-unicode", "signature": _QA, "inputs": {"question": "¿Qué es «DSPy»? 日本語 🚀 — naïve"}},
    {"id": "qa-missing-input", "signature": "question, context -> answer", "inputs": {"question": "Where?"}},
    {"id": "qa-extra-input", "signature": _QA, "inputs": {"question": "Q?", "unused": "ignored"}},
    {
        "id": "str-list-values",
        "signature": "question, context -> answer",
        "inputs": {"question": "Q?", "context": ["first passage", "second «quoted» passage", "multi\nline passage"]},
    },
    {
        "id": "str-list-single",
        "signature": "question, context -> answer",
        "inputs": {"question": "Q?", "context": ["only one"]},
    },
    {"id": "str-list-empty", "signature": "question, context -> answer", "inputs": {"question": "Q?", "context": []}},
    {
        "id": "typed-list-input",
        "signature": "question, context: list[str] -> answer",
        "inputs": {"question": "Q?", "context": ["a", 'b "quoted"', "ü"]},
    },
    {
        "id": "numbers",
        "signature": "a: int, b: float, c: float, d: float, e: int -> total: float",
        "inputs": {"a": 3, "b": 0.1, "c": 1e20, "d": 1.5e-7, "e": -12345678901234},
    },
    {
        "id": "floats-integral",
        "signature": "a: float, b: float, c: float -> d: int",
        "inputs": {"a": 1.0, "b": 100.0, "c": 1e16},
    },
    {
        "id": "bools-none",
        "signature": "flag: bool, other: bool, missing: Optional[str] -> verdict: bool",
        "inputs": {"flag": True, "other": False, "missing": None},
    },
    {
        "id": "dict-input",
        "signature": "data: dict[str, Any] -> summary",
        "inputs": {
            "data": {"name": "Ada", "tags": ["x", "y"], "score": 9.5, "ok": True, "none": None, "nested": {"k": [1, 2]}}
        },
    },
    {"id": "str-field-dict-value", "signature": "data -> summary", "inputs": {"data": {"a": 1, "b": "two"}}},
    {"id": "str-field-number-value", "signature": "data -> summary", "inputs": {"data": 42}},
    {
        "id": "output-types",
        "signature": "text -> count: int, ratio: float, ok: bool, label: Literal['a', 'b'], tags: list[str], scores: dict[str, float], maybe: Optional[int], pair: tuple[int, str], anything: Any",
        "inputs": {"text": "hello"},
    },
    {
        "id": "output-nested",
        "signature": "text -> table: list[dict[str, list[int]]], choice: Union[Literal['x', 'y'], int], uniq: set[str]",
        "inputs": {"text": "hello"},
    },
    {"id": "literal-quotes", "signature": "a -> b: Literal['it\\'s', 'say \"hi\"', 3, None]", "inputs": {"a": "x"}},
    {
        "id": "class-style",
        "signature": _CLASS_STYLE,
        "inputs": {"review": "Great product, terrible support.", "product": "Widget"},
    },
    {
        "id": "class-style-prefix",
        "signature": {
            "instructions": "Translate.",
            "inputs": [{"name": "english_text", "type": "str", "desc": "Text in English", "prefix": "English:"}],
            "outputs": [{"name": "french_text", "desc": "Text in French", "prefix": "French:"}],
        },
        "inputs": {"english_text": "Hello"},
    },
    {
        "id": "class-style-constraints",
        "signature": {
            "instructions": "Score it.",
            "inputs": [{"name": "essay", "type": "str", "constraints": {"min_length": 10}}],
            "outputs": [
                {
                    "name": "score",
                    "type": "int",
                    "desc": "1 to 10",
                    "constraints": {"gt": 0, "lt": 11, "multiple_of": 1},
                }
            ],
        },
        "inputs": {"essay": "A short essay about things."},
    },
    {
        "id": "instructions-multiline",
        "signature": {
            "instructions": "\n    Do the task.\n\n        Step one.\n    Step two.\n",
            "inputs": [{"name": "a"}],
            "outputs": [{"name": "b"}],
        },
        "inputs": {"a": "x"},
    },
    {
        "id": "instructions-tabs",
        "signature": {
            "instructions": "Line\twith tab\n\tIndented by tab\n  two spaces",
            "inputs": [{"name": "a"}],
            "outputs": [{"name": "b"}],
        },
        "inputs": {"a": "x"},
    },
    {
        "id": "instructions-empty",
        "signature": {"instructions": "", "inputs": [{"name": "a"}], "outputs": [{"name": "b"}]},
        "inputs": {"a": "x"},
    },
    {
        "id": "demos-complete",
        "signature": _QA,
        "demos": [{"question": "2+2?", "answer": "4"}, {"question": "Capital of Italy?", "answer": "Rome"}],
        "inputs": {"question": "Capital of Spain?"},
    },
    {
        "id": "demos-incomplete",
        "signature": "question, context -> reasoning, answer",
        "demos": [
            {"question": "Q1", "answer": "A1"},
            {"question": "Q2", "context": "C2", "reasoning": "R2", "answer": "A2"},
            {"question": "Q3", "context": None, "reasoning": "R3", "answer": "A3"},
            {"question": "only input"},
            {"answer": "only output"},
            {"context": "C5", "answer": "A5", "extra": "ignored"},
        ],
        "inputs": {"question": "Q?", "context": "C"},
    },
    {
        "id": "demos-typed",
        "signature": "text -> count: int, tags: list[str]",
        "demos": [{"text": "a b", "count": 2, "tags": ["a", "b"]}, {"text": "c", "count": 1}],
        "inputs": {"text": "d e f"},
    },
    {
        "id": "demos-multiline-unicode",
        "signature": _QA,
        "demos": [{"question": "Multi\nline\nquestion?", "answer": "Réponse\n  avec «guillemets» 🎉"}],
        "inputs": {"question": "Next?"},
    },
    {
        "id": "history",
        "signature": _HISTORY_SIG,
        "inputs": {
            "question": "And Germany?",
            "history": {
                "messages": [
                    {"question": "What is the capital of France?", "answer": "Paris"},
                    {"question": "And Italy?", "answer": "Rome"},
                ]
            },
        },
    },
    {
        "id": "history-partial",
        "signature": _HISTORY_SIG,
        "inputs": {
            "question": "Next?",
            "history": {
                "messages": [
                    {"question": "Only a question"},
                    {"answer": "Only an answer"},
                    {"question": "Both", "answer": "Yes", "extra": "kept out"},
                ]
            },
        },
    },
    {"id": "history-empty", "signature": _HISTORY_SIG, "inputs": {"question": "Q?", "history": {"messages": []}}},
    {"id": "history-missing", "signature": _HISTORY_SIG, "inputs": {"question": "Q?"}},
    {
        "id": "history-with-demos",
        "signature": "question, history: dspy.History -> answer: int",
        "demos": [{"question": "1+1?", "answer": 2}],
        "inputs": {"question": "2+2?", "history": {"messages": [{"question": "3+3?", "answer": 6}]}},
    },
    {
        "id": "cot-simple",
        "signature": _QA,
        "module": "chain_of_thought",
        "inputs": {"question": "Why is the sky blue?"},
    },
    {
        "id": "cot-typed-demos",
        "signature": "question -> answer: float",
        "module": "chain_of_thought",
        "demos": [
            {"question": "Half of 3?", "reasoning": "3 / 2", "answer": 1.5},
            {"question": "No reasoning?", "answer": 2.0},
        ],
        "inputs": {"question": "Third of 9?"},
    },
    {"id": "no-inputs", "signature": "-> joke", "inputs": {}},
    {
        "id": "many-fields",
        "signature": "a, b, c, d -> w, x: int, y: bool, z",
        "inputs": {"a": "1", "b": "", "c": " padded ", "d": "tab\there"},
    },
    {
        "id": "camel-prefix",
        "signature": "userQuestion, HTMLBody -> shortAnswer",
        "inputs": {"userQuestion": "Q", "HTMLBody": "<p>x</p>"},
    },
    {"id": "empty-string-value", "signature": "a, b -> c", "inputs": {"a": "", "b": "   "}},
    {
        "id": "control-chars",
        "signature": "a, b: list[str] -> c",
        "inputs": {"a": "bell\u0007 and nul-ish \u001f", "b": ["tab\t", "cr\r", "ctl\u0001"]},
    },
]

# ---------------------------------------------------------------- parse
_CHAT_QA_OK = "[[ ## answer ## ]]\nParis\n\n[[ ## completed ## ]]"

_CONSTRAINT_PARSES = [
    ("top-level-not-checked", "q -> a: Annotated[int, Field(gt=0, lt=10)]", "15"),
    (
        "top-level-list-not-checked",
        "q -> a: Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=2)]",
        "[1, 2, 3]",
    ),
    ("nested-top-list", "q -> a: Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=2)]", "[-1]"),
    ("list-gt-ok", "q -> a: list[Annotated[int, Field(gt=0)]]", "[1, '2']"),
    ("list-gt", "q -> a: list[Annotated[int, Field(gt=0)]]", "[1, -2, 0]"),
    ("optional-le", "q -> a: Optional[Annotated[int, Field(le=5)]]", "15"),
    ("optional-le-none", "q -> a: Optional[Annotated[int, Field(le=5)]]", "None"),
    ("dict-multiple", "q -> a: dict[str, Annotated[int, Field(multiple_of=2)]]", '{"x": 3, "y": 4, "z": true}'),
    ("str-lengths", "q -> a: list[Annotated[str, Field(min_length=2, max_length=3)]]", '["a", "abcd", "abc", ""]'),
    (
        "float-bounds",
        "q -> a: list[Annotated[float, Field(gt=0.5, lt=2.5e20, allow_inf_nan=False)]]",
        '[0.1, "inf", 3e20, 1]',
    ),
    ("float-nan", "q -> a: list[Annotated[float, Field(ge=0.0)]]", '["nan", -1e-300, 0]'),
    ("float-multiple", "q -> a: list[Annotated[float, Field(multiple_of=0.1)]]", "[0.7, 1.25, 0.30000000000000004]"),
    ("int-order", "q -> a: list[Annotated[int, Field(ge=2, le=1, multiple_of=3)]]", "[0, 5, 1, '6', 7.0]"),
    ("list-too-long", "q -> a: list[Annotated[list[int], Field(max_length=1)]]", '[[1, "x"], [2]]'),
    ("list-too-short", "q -> a: list[Annotated[list[int], Field(min_length=2)]]", '[[1, "x"], [2]]'),
    ("set-too-long", "q -> a: list[Annotated[set[int], Field(max_length=1)]]", '[[1, "x", 2], ["x", 1]]'),
    ("frozenset-too-short", "q -> a: list[Annotated[frozenset[int], Field(min_length=2)]]", "[[1, 1], [1, 2]]"),
    (
        "dict-lengths",
        "q -> a: list[Annotated[dict[str, int], Field(min_length=1, max_length=1)]]",
        '[{}, {"a": 1, "b": "x"}, {"a": 1, "b": 2, "c": "x"}]',
    ),
    (
        "tuple-lengths",
        "q -> a: list[Annotated[tuple[int, ...], Field(min_length=2, max_length=2)]]",
        "[[1], [1, 2, 3], [4, 5]]",
    ),
    ("description-only", "q -> a: list[Annotated[bool, Field(description='flag')]]", "[true, 'no']"),
]

PARSE_CASES = [
    *[
        {
            "id": f"constraint-{name}",
            "signature": sig,
            "completions": {"chat": f"[[ ## a ## ]]\n{value}\n\n[[ ## completed ## ]]", "json": f'{{"a": {value}}}'},
        }
        for name, sig, value in _CONSTRAINT_PARSES
    ],
    {"id": "qa-ok", "signature": _QA, "completions": {"chat": _CHAT_QA_OK, "json": '{"answer": "Paris"}'}},
    {
        "id": "qa-preamble",
        "signature": _QA,
        "completions": {
            "chat": "Sure! Here you go.\n[[ ## answer ## ]]\nParis\n[[ ## completed ## ]]\ntrailing",
            "json": 'Here is the JSON:\n```json\n{"answer": "Paris"}\n```',
        },
    },
    {
        "id": "qa-inline-header",
        "signature": _QA,
        "completions": {
            "chat": "[[ ## answer ## ]]   Paris is the capital  \n  more text\n",
            "json": 'prefix {"answer": {"nested": "ignored?"}} suffix',
        },
    },
    {
        "id": "qa-duplicate",
        "signature": _QA,
        "completions": {
            "chat": "[[ ## answer ## ]]\nfirst\n[[ ## answer ## ]]\nsecond",
            "json": '{"answer": "first", "answer": "second"}',
        },
    },
    {
        "id": "qa-missing",
        "signature": _QA,
        "completions": {"chat": "[[ ## reasoning ## ]]\nno answer here", "json": '{"reasoning": "none"}'},
    },
    {
        "id": "qa-not-json",
        "signature": _QA,
        "completions": {"chat": "just some text without headers", "json": "just some text"},
    },
    {
        "id": "qa-multiline-unicode",
        "signature": _QA,
        "completions": {
            "chat": "[[ ## answer ## ]]\n  Réponse: «oui» 🎉\n\n  second line  \n\n[[ ## completed ## ]]",
            "json": '{"answer": "Réponse: «oui» 🎉\\nsecond line"}',
        },
    },
    {
        "id": "two-fields-order",
        "signature": "question -> reasoning, answer",
        "completions": {
            "chat": "[[ ## answer ## ]]\n42\n\n[[ ## reasoning ## ]]\nBecause.\n\n[[ ## completed ## ]]",
            "json": '{"answer": "42", "reasoning": "Because.", "extra": 1}',
        },
    },
    {
        "id": "header-variants",
        "signature": "q -> answer_1, Other",
        "completions": {
            "chat": "   [[ ## answer_1 ## ]]\nA\n[[ ##Other## ]]\nnot a header\n[[ ## Other ## ]]\nB",
            "json": '{"answer_1": "A", "Other": "B"}',
        },
    },
    {"id": "int-ok", "signature": "q -> n: int", "completions": {"chat": "[[ ## n ## ]]\n42", "json": '{"n": 42}'}},
    {
        "id": "int-string",
        "signature": "q -> n: int",
        "completions": {"chat": "[[ ## n ## ]]\n  7  ", "json": '{"n": "7"}'},
    },
    {
        "id": "int-from-float",
        "signature": "q -> n: int",
        "completions": {"chat": "[[ ## n ## ]]\n42.0", "json": '{"n": 42.0}'},
    },
    {
        "id": "int-fraction",
        "signature": "q -> n: int",
        "completions": {"chat": "[[ ## n ## ]]\n42.5", "json": '{"n": 42.5}'},
    },
    {
        "id": "int-word",
        "signature": "q -> n: int",
        "completions": {"chat": "[[ ## n ## ]]\nforty-two", "json": '{"n": "forty-two"}'},
    },
    {
        "id": "int-with-text",
        "signature": "q -> n: int",
        "completions": {"chat": "[[ ## n ## ]]\n42 apples", "json": '{"n": "42 apples"}'},
    },
    {
        "id": "float-ok",
        "signature": "q -> x: float",
        "completions": {"chat": "[[ ## x ## ]]\n3.14", "json": '{"x": 3.14}'},
    },
    {
        "id": "float-forms",
        "signature": "q -> x: float, y: float, z: float",
        "completions": {
            "chat": "[[ ## x ## ]]\n1e3\n[[ ## y ## ]]\n-0.5\n[[ ## z ## ]]\n7",
            "json": '{"x": "1e3", "y": -0.5, "z": 7}',
        },
    },
    {
        "id": "float-bad",
        "signature": "q -> x: float",
        "completions": {"chat": "[[ ## x ## ]]\nabout three", "json": '{"x": "about three"}'},
    },
    {
        "id": "bool-forms",
        "signature": "q -> a: bool, b: bool, c: bool, d: bool",
        "completions": {
            "chat": "[[ ## a ## ]]\nTrue\n[[ ## b ## ]]\nfalse\n[[ ## c ## ]]\nyes\n[[ ## d ## ]]\n0",
            "json": '{"a": true, "b": "false", "c": "yes", "d": 0}',
        },
    },
    {
        "id": "bool-bad",
        "signature": "q -> a: bool",
        "completions": {"chat": "[[ ## a ## ]]\nmaybe", "json": '{"a": "maybe"}'},
    },
    {
        "id": "list-json",
        "signature": "q -> items: list[str]",
        "completions": {"chat": '[[ ## items ## ]]\n["a", "b", "c"]', "json": '{"items": ["a", "b", "c"]}'},
    },
    {
        "id": "list-python",
        "signature": "q -> items: list[str]",
        "completions": {"chat": "[[ ## items ## ]]\n['a', 'b']", "json": "{'items': ['a', 'b']}"},
    },
    {
        "id": "list-fenced",
        "signature": "q -> items: list[int]",
        "completions": {
            "chat": "[[ ## items ## ]]\n```json\n[1, 2, 3]\n```",
            "json": '```\n{"items": [1, 2, 3],}\n```',
        },
    },
    {
        "id": "list-trailing-comma",
        "signature": "q -> items: list[int]",
        "completions": {"chat": "[[ ## items ## ]]\n[1, 2, 3,]", "json": '{"items": [1, 2, 3,]}'},
    },
    {
        "id": "list-unclosed",
        "signature": "q -> items: list[str]",
        "completions": {"chat": '[[ ## items ## ]]\n["a", "b"', "json": '{"items": ["a", "b"'},
    },
    {
        "id": "list-wrong-items",
        "signature": "q -> items: list[int]",
        "completions": {"chat": '[[ ## items ## ]]\n["a", "b"]', "json": '{"items": ["a", "b"]}'},
    },
    {
        "id": "list-str-items-numbers",
        "signature": "q -> items: list[str]",
        "completions": {"chat": "[[ ## items ## ]]\n[1, 2]", "json": '{"items": [1, 2]}'},
    },
    {
        "id": "dict-ok",
        "signature": "q -> scores: dict[str, float]",
        "completions": {"chat": '[[ ## scores ## ]]\n{"a": 1, "b": 2.5}', "json": '{"scores": {"a": 1, "b": 2.5}}'},
    },
    {
        "id": "dict-python",
        "signature": "q -> scores: dict[str, int]",
        "completions": {"chat": "[[ ## scores ## ]]\n{'a': 1, 'b': 2}", "json": "{\"scores\": {'a': 1}}"},
    },
    {
        "id": "literal-ok",
        "signature": "q -> label: Literal['pos', 'neg']",
        "completions": {"chat": "[[ ## label ## ]]\npos", "json": '{"label": "neg"}'},
    },
    {
        "id": "literal-quoted",
        "signature": "q -> label: Literal['pos', 'neg']",
        "completions": {"chat": "[[ ## label ## ]]\n'pos'", "json": '{"label": "\\"neg\\""}'},
    },
    {
        "id": "literal-wrapped",
        "signature": "q -> label: Literal['pos', 'neg']",
        "completions": {"chat": "[[ ## label ## ]]\nLiteral['pos']", "json": '{"label": "str[neg]"}'},
    },
    {
        "id": "literal-bad",
        "signature": "q -> label: Literal['pos', 'neg']",
        "completions": {"chat": "[[ ## label ## ]]\nPOS", "json": '{"label": "positive"}'},
    },
    {
        "id": "literal-int",
        "signature": "q -> n: Literal[1, 2, 3]",
        "completions": {"chat": "[[ ## n ## ]]\n2", "json": '{"n": "3"}'},
    },
    {
        "id": "optional-none",
        "signature": "q -> n: Optional[int]",
        "completions": {"chat": "[[ ## n ## ]]\nNone", "json": '{"n": null}'},
    },
    {
        "id": "optional-missing",
        "signature": "q -> a, n: Optional[int]",
        "completions": {"chat": "[[ ## a ## ]]\nx", "json": '{"a": "x"}'},
    },
    {
        "id": "optional-str",
        "signature": "q -> s: str | None",
        "completions": {"chat": "[[ ## s ## ]]\nNone", "json": '{"s": "hello"}'},
    },
    {
        "id": "union-int-str",
        "signature": "q -> v: Union[int, str]",
        "completions": {"chat": "[[ ## v ## ]]\n12", "json": '{"v": "twelve"}'},
    },
    {
        "id": "tuple",
        "signature": "q -> t: tuple[int, str]",
        "completions": {"chat": '[[ ## t ## ]]\n[1, "a"]', "json": '{"t": [1, "a"]}'},
    },
    {
        "id": "any",
        "signature": "q -> v: Any",
        "completions": {"chat": '[[ ## v ## ]]\n{"k": [1, 2.5, null, true]}', "json": '{"v": "plain"}'},
    },
    {
        "id": "nested",
        "signature": "q -> rows: list[dict[str, list[int]]]",
        "completions": {
            "chat": '[[ ## rows ## ]]\n[{"a": [1, 2]}, {"b": []}]',
            "json": '{"rows": [{"a": [1, 2]}, {"b": []}]}',
        },
    },
    {
        "id": "set-ok",
        "signature": "q -> s: set[int]",
        "completions": {"chat": "[[ ## s ## ]]\n[1, 2, 2]", "json": '{"s": [3, 1]}'},
    },
    {
        "id": "set-bad",
        "signature": "q -> s: set[int]",
        "completions": {"chat": '[[ ## s ## ]]\n[1, "x"]', "json": '{"s": "nope"}'},
    },
    {
        "id": "frozenset-str",
        "signature": "q -> s: frozenset[str]",
        "completions": {"chat": '[[ ## s ## ]]\n["a", "b"]', "json": '{"s": [1, "b"]}'},
    },
    {
        "id": "vartuple",
        "signature": "q -> t: tuple[int, ...]",
        "completions": {"chat": "[[ ## t ## ]]\n[1, 2, 3]", "json": '{"t": [1, "two"]}'},
    },
    {
        "id": "tuple-length",
        "signature": "q -> t: tuple[int, str]",
        "completions": {"chat": '[[ ## t ## ]]\n[1, "a", 3]', "json": '{"t": [1]}'},
    },
    {
        "id": "dict-bad-value",
        "signature": "q -> d: dict[str, int]",
        "completions": {"chat": '[[ ## d ## ]]\n{"a": "one", "b": 2}', "json": '{"d": {"a": [1]}}'},
    },
    {
        "id": "dict-int-keys",
        "signature": "q -> d: dict[int, str]",
        "completions": {"chat": '[[ ## d ## ]]\n{"1": "a", "x": "b"}', "json": '{"d": {"2": "b"}}'},
    },
    {
        "id": "optional-list-bad",
        "signature": "q -> v: Optional[list[int]]",
        "completions": {"chat": '[[ ## v ## ]]\n[1, "a"]', "json": '{"v": "x"}'},
    },
    {
        "id": "union-list-bad",
        "signature": "q -> v: Union[int, list[str]]",
        "completions": {"chat": '[[ ## v ## ]]\n{"a": 1}', "json": '{"v": [1, 2]}'},
    },
    {
        "id": "literal-mixed",
        "signature": "q -> v: Literal['a', 1, True, None]",
        "completions": {"chat": "[[ ## v ## ]]\nb", "json": '{"v": 2}'},
    },
    {
        "id": "nested-bad",
        "signature": "q -> rows: list[dict[str, int]]",
        "completions": {"chat": '[[ ## rows ## ]]\n[{"a": 1}, {"b": "x"}]', "json": '{"rows": [{"a": 1}, 5]}'},
    },
    {
        "id": "list-of-lists-bad",
        "signature": "q -> m: list[list[float]]",
        "completions": {"chat": '[[ ## m ## ]]\n[[1, 2], ["x"]]', "json": '{"m": [1, 2]}'},
    },
    {
        "id": "cot",
        "signature": _QA,
        "module": "chain_of_thought",
        "completions": {
            "chat": "[[ ## reasoning ## ]]\nThink step by step.\n\n[[ ## answer ## ]]\n4\n\n[[ ## completed ## ]]",
            "json": '{"reasoning": "Think.", "answer": "4"}',
        },
    },
    {"id": "empty-completion", "signature": _QA, "completions": {"chat": "", "json": ""}},
    {
        "id": "str-field-json-value",
        "signature": _QA,
        "completions": {"chat": '[[ ## answer ## ]]\n{"not": "parsed"}', "json": '{"answer": 42}'},
    },
    {
        "id": "json-array-top",
        "signature": _QA,
        "completions": {"json": '["not", "an", "object"]'},
        "adapters": ["json"],
    },
    {
        "id": "json-single-quotes",
        "signature": "q -> answer, n: int",
        "completions": {"json": "{'answer': 'yes', 'n': '3'}"},
        "adapters": ["json"],
    },
    {
        "id": "json-unquoted-keys",
        "signature": "q -> answer",
        "completions": {"json": '{answer: "yes"}'},
        "adapters": ["json"],
    },
    {
        "id": "json-comment",
        "signature": "q -> answer",
        "completions": {"json": '{"answer": "yes" // trailing comment\n}'},
        "adapters": ["json"],
    },
]

# ---------------------------------------------------------------- metrics
METRIC_CASES = [
    {"id": "norm-basic", "fn": "normalize_text", "text": "The,  Eiffel  Tower!"},
    {"id": "norm-articles", "fn": "normalize_text", "text": "A cat and an owl saw the Theatre; another THE"},
    {"id": "norm-unicode", "fn": "normalize_text", "text": "Café — naïve “quotes” «x» Ünïcödé"},
    {"id": "norm-whitespace", "fn": "normalize_text", "text": "  tabs\tand\nnewlines\u00a0nbsp  "},
    {"id": "norm-empty", "fn": "normalize_text", "text": ""},
    {"id": "f1-partial", "fn": "f1_score", "prediction": "Eiffel Tower is in Paris", "ground_truth": "Paris"},
    {"id": "f1-full", "fn": "f1_score", "prediction": "the Eiffel Tower", "ground_truth": "Eiffel Tower"},
    {"id": "f1-none", "fn": "f1_score", "prediction": "London", "ground_truth": "Paris"},
    {"id": "f1-empty", "fn": "f1_score", "prediction": "", "ground_truth": "the"},
    {"id": "f1-repeats", "fn": "f1_score", "prediction": "a a b b b", "ground_truth": "b b c"},
    {"id": "hotpot-yes-no", "fn": "hotpot_f1_score", "prediction": "yes", "ground_truth": "no"},
    {"id": "hotpot-normal", "fn": "hotpot_f1_score", "prediction": "red blue", "ground_truth": "blue green"},
    {"id": "em-str", "fn": "answer_exact_match", "answer": "Paris", "prediction": "paris!"},
    {
        "id": "em-list",
        "fn": "answer_exact_match",
        "answer": ["Eiffel Tower", "Louvre"],
        "prediction": "The Eiffel Tower",
    },
    {"id": "em-miss", "fn": "answer_exact_match", "answer": "Paris", "prediction": "Paris, France"},
    {
        "id": "em-frac",
        "fn": "answer_exact_match",
        "answer": ["Eiffel Tower", "Louvre"],
        "prediction": "The Eiffel Tower",
        "frac": 0.5,
    },
    {
        "id": "em-frac-miss",
        "fn": "answer_exact_match",
        "answer": "Paris France Europe",
        "prediction": "Paris",
        "frac": 0.6,
    },
    {"id": "em-unicode", "fn": "answer_exact_match", "answer": "Café", "prediction": "cafe\u0301"},
    {
        "id": "passage-hit",
        "fn": "answer_passage_match",
        "answer": "Eiffel Tower",
        "passages": ["The Eiffel Tower is in Paris.", "Other"],
    },
    {
        "id": "passage-miss",
        "fn": "answer_passage_match",
        "answer": ["Louvre"],
        "passages": ["The Eiffel Tower is in Paris."],
    },
    {"id": "passage-token-boundary", "fn": "answer_passage_match", "answer": "Paris", "passages": ["Parisian cafés"]},
    {
        "id": "passage-unicode",
        "fn": "answer_passage_match",
        "answer": "São Paulo",
        "passages": ["I flew to sao paulo?", "São Paulo, Brazil"],
    },
    {"id": "passage-punct", "fn": "answer_passage_match", "answer": "U.S.A.", "passages": ["born in the usa in 1990"]},
]

# ---------------------------------------------------------------- lax reading
# Text an LM may put in a typed field, read as DSPy reads it: json_repair.loads,
# then ast.literal_eval when that yields nothing.
LAX_CASES = [
    "42",
    " 1e3 ",
    '"x"',
    "null",
    "true",
    "42 apples",
    "forty-two",
    "True",
    "None",
    "",
    "'pos'",
    "(1, 2)",
    "[1] [2]",
    '{"a":1} {"a":2}',
    '{"a":1}, {"b":2}',
    "[1], [2]",
    'Sure: {"a": True, "b": None}',
    "{1, 2}",
    '{"a": "x" "b": 2}',
    '{"a": yes}',
    "[yes, no]",
    '{"text": "He said "hi" ok"}',
    '{"a": 1 /* c */, "b": 2}',
    '{"a": [1, 2',
    "{a: 1, b: two words}",
    '["a" "b"]',
    '{"a": "unterminated}',
    '{"a": (1, 2)}',
    "[1, 2, ...]",
    '{"a": 1.5e3, "b": -2, "c": .5}',
    '{"key": "value\\nline"}',
    "{'a': 'it\\'s'}",
    '{"a": True, "b": False, "c": None}',
    "[1 2 3]",
    '[{"a": 1}, {"a": 2}]',
    '{"n": 42.0}',
    'answer: {"x": 1}',
    "['a', 'b']",
    "```json\n[1, 2, 3]\n```",
    '```\n{"items": [1, 2, 3],}\n```',
    "[1, 2, 3,]",
    '["a", "b"',
    "{'a': 1, 'b': 2}",
    '{answer: "yes"}',
    '{"answer": "yes" // trailing comment\n}',
    '["a", "b"]',
    "[1, 2]",
    '{"a": 1, "b": 2.5}',
    "{'a': 1}",
    '[{"a": [1, 2]}, {"b": []}]',
    '{"k": [1, 2.5, null, true]}',
    '[1, "a"]',
    "Literal['pos']",
    "maybe",
    "0",
    "about three",
    "- item one\n- item two",
    "1, 2, 3",
    "a, b",
    '{"a": {"b": {"c": [1, {"d": 2}]}}}',
    '{"a": \'mixed" quotes\'}',
    '{"a": "line1\nline2"}',
    '  {"a": 1}  trailing words',
    "[[1, 2], [3, 4]]",
    '{"a": -0.0, "b": 1E-7}',
    '{"emoji": "🚀", "é": "ü"}',
    "{'nested': {'x': [None, False]}}",
    "[]",
    "{}",
    '{"a": "x",}',
    "[,1]",
    '{"a" 1}',
    "# comment\n[1]",
    '/* block */ {"a": 1}',
    "{\"a\": 'single'}",
]
