"""Episodes: cutting a model's output stream z into z_0, z_1, ..., z_{k-1}.

Paper: Sec. 4.2 (episodes), Sec. 5 and App. D (the Wait/Alternatively segmentation of R1 thoughts,
Fig. 21), App. A and Fig. 30 (the backtracking-search format), App. F (budget-forcing phrases).

Notation, used in every file of this project: z_{0:j} is the prefix made of the first j episodes,
z_0 ... z_{j-1} (a half-open range, like a Python slice), so z_{0:0} is the empty prefix and z_{0:k}
the whole stream. The paper writes the same prefix z_{0:j-1} (App. D: "for each prefix of episodes
z_{0:j-1}"; Def. 6.1's context c_{j-1}); its Def. 4.1 sums J_r(mu | x, z_{0:j}) over the prefixes
holding 1..k episodes, which is z_{0:1} ... z_{0:k} here.

Text only: no torch, no tokenizer. Every function here is lossless where it cuts text, so that a
thought prefix z_{0:j} is always a literal prefix of what the model wrote.
"""

import re
from dataclasses import dataclass

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

# Fig. 21: a step that begins with one of these phrases starts a new episode.
EPISODE_PHRASES = (
    "Wait",
    "But wait",
    "Alternatively",
    "Is there another way to think about this?",
    "But let me double-check",
    "But hold on",
)

# App. F: budget forcing appends these, cycled in this order, each time the model closes its thought.
FORCING_PHRASES = ("Wait", "Alternatively", "But hold on", "But wait")

# Fig. 30: the backtracking-search format's marker between an attempt and its revision.
BACKTRACK_MARKER = "Wait, this seems off. Let's try something else."


# ----------------------------------------------------------------------------------------------
# The thought block
# ----------------------------------------------------------------------------------------------

def split_think(response, in_thought=True):
    """Split a response z into (thought, outside, closed).

    thought: the text between `<think>` and the first `</think>`.
    outside: the text outside the thought: what follows `</think>`, plus whatever (rarely) came
             before `<think>`. This is the part a grader reads (grader.reward).
    closed:  False when the generation never wrote `</think>` (truncated at max_tokens).

    `in_thought` says whether the response starts inside an already opened thought, as it does when
    the chat template's generation prompt ends with "<think>\\n" (DeepSeek-R1-Distill does). With
    in_thought=True a response without any tag is all thought and not closed (a truncated trace);
    with in_thought=False it has no thought at all: ("", response, True).
    """
    close = response.find(THINK_CLOSE)
    search_end = close if close >= 0 else len(response)
    open_ = response.find(THINK_OPEN, 0, search_end)
    if open_ >= 0:
        before, start = response[:open_], open_ + len(THINK_OPEN)
    elif in_thought or close >= 0:
        before, start = "", 0
    else:
        return "", response, True
    if close < 0:
        return response[start:], before, False
    return response[start:close], before + response[close + len(THINK_CLOSE):], True


def reasoning_stream(response, thinking=True, finished=True):
    """(stream, closed): the text cut into episodes, and whether it ended.

    thinking=True (R1-style): the thought of split_think, closed once "</think>" is written.
    thinking=False (a model with no thought block, as in App. A, where the episodes are attempts and
    backtracks): the whole response, closed when generation `finished` (not cut at max_tokens).
    """
    if not thinking:
        return response, finished
    thought, _, closed = split_think(response)
    return thought, closed


# ----------------------------------------------------------------------------------------------
# Steps and episodes (Sec. 5, App. D)
# ----------------------------------------------------------------------------------------------

# A step break is a blank line ("\n\n" in App. D); a run of blank lines, lines of spaces and "\r\n"
# endings count as one break. We take runs as one break so that "\n\n\n" does not make empty steps.
_STEP_BREAK = re.compile(r"\r?\n(?:[ \t]*\r?\n)+")

# The end of a sentence, with the whitespace after it through its last newline: where split_steps'
# second cut falls. Spaces and tabs after the last newline go with the phrase, as the step break leaves
# them with the next step: a byte-level BPE (Qwen2's split) writes " Wait" as one token and ".\n" as
# another, so the cut falls between tokens and the phrase's token is in the episode it opens.
_SENTENCE_END = re.compile(r"[.!?](?:\s*\n)?")
_SPACES = re.compile(r"\s*")
_LINE_ENDS = re.compile(r"(?:\s*\n)?")   # whitespace through its last newline


def _sentence_phrase_starts(thought, phrases):
    """The positions in `thought` where a step opened by one of `phrases` starts a sentence: right
    after ".", "!" or "?" (and the newlines after it), when the text from there is whitespace and the
    phrase, matched as whole words as starts_with_phrase does ("Waiting" is not "Wait"). "I Wait" or
    "4Wait" do not start a sentence."""
    if not phrases:
        return []
    width = max(map(len, phrases)) + 1   # enough text to decide a match, without copying the rest
    starts = []
    for m in _SENTENCE_END.finditer(thought):
        word = _SPACES.match(thought, m.end()).end()
        if word < len(thought) and starts_with_phrase(thought[word:word + width], phrases):
            starts.append(m.end())
    return starts


def split_steps(thought, phrases=EPISODE_PHRASES):
    """Cut a thought into steps, App. D: "each step is an entry separated by the delimiter \\n\\n".

    We also cut before a Fig. 21 phrase (one of `phrases`) that starts a sentence, wherever it
    stands: "No.Wait, try 4." is two steps, "No." and "Wait, try 4."; "No. Wait, try 4." is "No."
    and " Wait, try 4." (spaces go with the phrase, newlines with the sentence before, as at a
    break: see _SENTENCE_END). Why: App. D cuts only at "\\n\\n", so a policy that drops the one
    break before a phrase merges two episodes (split_episodes says what that does to the credit).
    With this cut a dropped break moves no episode boundary; only the break's characters are
    absent. phrases=() gives App. D's rule alone.

    Each step keeps the break (or the newlines before the phrase) that follows it, and blank text
    at the very start stays with the first step, so "".join(split_steps(t)) == t for every t. An
    empty thought has no steps.
    """
    cuts = {m.end() for m in _STEP_BREAK.finditer(thought)} | set(_sentence_phrase_starts(thought, phrases))
    bounds = [0] + sorted(c for c in cuts if 0 < c < len(thought)) + [len(thought)]
    steps, pending = [], ""
    for a, b in zip(bounds, bounds[1:]):
        pending += thought[a:b]
        if pending.strip():   # blank text (at the very start, or a stray "\r" between breaks) joins the next step
            steps.append(pending)
            pending = ""
    if pending:   # blank text at the very end stays with the last step
        if steps:
            steps[-1] += pending
        else:
            steps.append(pending)
    return steps


def starts_with_phrase(step, phrases=EPISODE_PHRASES):
    """True when the step, after leading whitespace, begins with one of the phrases as whole words.

    "Wait, ..." and "But wait, ..." match; "Waiting ..." does not match "Wait". Case-sensitive, as
    R1 writes these phrases capitalised at the start of a step.
    """
    text = step.lstrip()
    for phrase in phrases:
        if text.startswith(phrase):
            rest = text[len(phrase):len(phrase) + 1]
            if not rest or not (rest.isalnum() or rest == "_") or not phrase[-1].isalnum():
                return True
    return False


def _split_at_ends(thought, ends):
    """split_episodes' `ends` rule: an episode ends after each match of the pattern and the
    whitespace that follows it through its last newline (spaces before the next word go with it, as
    in split_steps); the text after the last match is one more episode, or joins the last one when
    it is only whitespace."""
    pattern = re.compile(ends)
    if pattern.search("") is not None:
        raise ValueError(f"split_episodes: ends={pattern.pattern!r} can match the empty string; "
                         f"an episode end must match at least one character")
    eps, start = [], 0
    for m in pattern.finditer(thought):
        if m.end() == m.start():   # a zero-width match the check above cannot see (e.g. r"\b")
            raise ValueError(f"split_episodes: ends={pattern.pattern!r} can match the empty string "
                             f"(at character {m.start()}); an episode end must match at least one character")
        stop = _LINE_ENDS.match(thought, m.end()).end()
        if stop > start:   # a match inside the whitespace already taken adds nothing
            eps.append(thought[start:stop])
            start = stop
    tail = thought[start:]
    if eps and not tail.strip():
        eps[-1] += tail
    elif tail:
        eps.append(tail)
    return eps


def split_episodes(thought, phrases=EPISODE_PHRASES, min_steps=3, max_episodes=None, ends=None):
    """Segment a thought into episodes z_0, ..., z_{k-1} (Sec. 5, App. D, Fig. 21).

    A step (split_steps) that begins with one of `phrases` opens a new episode, unless the current
    episode has fewer than `min_steps` steps (App. D: "at least three steps ... to avoid consecutive
    trivial episodes"), in which case it stays in the current one. App. D's steps end at "\\n\\n";
    split_steps also ends one before a phrase that starts a sentence ("No. Wait, ..."), so that
    dropping one break cannot merge two episodes. A merge would hand the next episode's progress to
    the merged episode's tokens, so the one token where the break was dropped would be paid for the
    next episode's progress, and the policy would learn to drop breaks for credit.

    `ends` (a regex, string or compiled) replaces the phrase rule and min_steps, for text whose
    episodes end with a known statement (toy.py's "...: x in 5..9."): an episode ends right after
    each match of `ends` and the whitespace that follows it (through its last newline), whether or
    not a break follows; text after the last match is one more episode. A pattern that can match
    the empty string is a ValueError.

    `max_episodes` merges the last l - k episodes into one (footnote 1). Lossless:
    "".join(episodes) == thought. An empty thought has no episodes.
    """
    if min_steps < 1:
        raise ValueError(f"split_episodes: min_steps must be >= 1, got {min_steps}")
    if max_episodes is not None and max_episodes < 1:
        raise ValueError(f"split_episodes: max_episodes must be >= 1 or None, got {max_episodes}")
    if ends is not None:
        episodes = _split_at_ends(thought, ends)
    else:
        episodes, current = [], []  # current: the steps of the episode being built
        for step in split_steps(thought, phrases):
            if current and len(current) >= min_steps and starts_with_phrase(step, phrases):
                episodes.append("".join(current))
                current = []
            current.append(step)
        if current:
            episodes.append("".join(current))
    if max_episodes is not None and len(episodes) > max_episodes:
        episodes = episodes[:max_episodes - 1] + ["".join(episodes[max_episodes - 1:])]
    return episodes


def group_episodes(episodes, size):
    """Concatenate consecutive episodes in groups of `size` (App. D: 5 for Omni-MATH, 3 for AIME).

    The last group holds the remainder. Grouping only coarsens the cut points, so the groups are
    again a lossless segmentation of the same thought.
    """
    if size < 1:
        raise ValueError(f"group_episodes: size must be >= 1, got {size}")
    return ["".join(episodes[i:i + size]) for i in range(0, len(episodes), size)]


def thought_prefixes(episodes):
    """The k + 1 thought prefixes z_{0:j} = z_0 ... z_{j-1} for j = 0..k, the empty one first
    (the paper's z_{0:j-1}: see the notation at the top of this file).

    These are what the meta-prover mu(.|x, z_{0:j}) (Eq. 4) is conditioned on; prefix j is a
    literal prefix of prefix j + 1.
    """
    prefixes, text = [""], ""
    for episode in episodes:
        text += episode
        prefixes.append(text)
    return prefixes


def forcing_phrase(i):
    """The phrase budget forcing appends the i-th time (i = 0, 1, ...), App. F: cycled in order."""
    return FORCING_PHRASES[i % len(FORCING_PHRASES)]


# ----------------------------------------------------------------------------------------------
# Backtracking search (App. A, Fig. 5 right, Fig. 30)
# ----------------------------------------------------------------------------------------------
#
# Format (Fig. 30), one backtrack:
#
#     [preamble]Step 1: ...\n\nStep 2: ...\n\n ... Step n: ...\n\nAnswer: ...\n\n      <- attempt z_0
#     Wait, this seems off. Let's try something else.\n\n[error analysis]               <- backtrack z_1
#     Step k: ...\n\n ... Answer: ...                                                   <- revision z_2
#
# Restarting at "Step k:" means backtracking to step k - 1: the revised solution is the attempt's
# steps 1..k-1 followed by the revision. In the linearized mode of Sec. 8.4 the text carries on with
# more markers and revisions, each one backtracking into the previous revised solution.

_STEP_LINE = re.compile(r"^[ \t]*Step[ \t]+(\d+)[ \t]*:", re.MULTILINE)
_ANSWER_LINE = re.compile(r"^[ \t]*Answer[ \t]*:", re.MULTILINE)


@dataclass
class Backtrack:
    """One backtrack of the backtracking-search format (App. A): episodes z_0, z_1, z_2.

    attempt, backtrack and revision are the literal episodes as they appear in the text, so
    attempt + backtrack + revision is a substring of it. backtrack_step is k - 1 when the revision
    restarts at "Step k:". revised_solution is the solution the revision produces: the first
    backtrack_step steps of the solution backtracked from, then the revision's steps and answer.
    """
    attempt: str
    backtrack: str
    revision: str
    backtrack_step: int
    attempt_answer: str
    revision_answer: str
    revised_solution: str

    @property
    def episodes(self):
        return [self.attempt, self.backtrack, self.revision]


@dataclass
class _Solution:
    """A parsed attempt: preamble, "Step n:" chunks (with trailing breaks), the "Answer:" chunk."""
    preamble: str
    steps: list
    answer_chunk: str
    first_step: int

    @property
    def answer(self):
        line = self.answer_chunk.split("\n", 1)[0]
        return line[line.index(":") + 1:].strip()


def _line_of(text, pos):
    return text.count("\n", 0, pos) + 1


def _parse_solution(text, offset, whole, what, first_step=None):
    """Parse `text` (found at `offset` in `whole`) as preamble, Step lines and an Answer line."""
    steps = list(_STEP_LINE.finditer(text))
    answers = list(_ANSWER_LINE.finditer(text))
    where = f"{what} (line {_line_of(whole, offset)})"
    if not steps:
        raise ValueError(f"parse_backtrack: {where}: expected a line starting 'Step <n>:', found none")
    if not answers:
        raise ValueError(f"parse_backtrack: {where}: expected an 'Answer:' line after the steps, found none")
    answer = answers[0]
    if answer.start() < steps[0].start():
        raise ValueError(f"parse_backtrack: {where}: 'Answer:' at line "
                         f"{_line_of(whole, offset + answer.start())} comes before the first step")
    inside = [m for m in steps if m.start() < answer.start()]
    after = [m for m in steps if m.start() > answer.start()]
    if after:
        raise ValueError(f"parse_backtrack: {where}: 'Step {after[0].group(1)}:' at line "
                         f"{_line_of(whole, offset + after[0].start())} comes after the 'Answer:' line; "
                         f"a new attempt must follow the marker {BACKTRACK_MARKER!r}")
    numbers = [int(m.group(1)) for m in inside]
    start = numbers[0] if first_step is None else first_step
    for i, (m, n) in enumerate(zip(inside, numbers)):
        if n != start + i:
            raise ValueError(f"parse_backtrack: {where}: expected 'Step {start + i}:' at line "
                             f"{_line_of(whole, offset + m.start())}, found 'Step {n}:'")
    bounds = [m.start() for m in inside] + [answer.start()]
    return _Solution(preamble=text[:bounds[0]],
                     steps=[text[a:b] for a, b in zip(bounds, bounds[1:])],
                     answer_chunk=text[answer.start():], first_step=start)


def parse_backtrack(text):
    """Parse backtracking-search text (App. A, Fig. 30) into a list of Backtrack, one per marker.

    The first attempt must number its steps 1, 2, ...; each revision restarts at some "Step k:" with
    1 <= k <= (steps of the solution it revises) and counts up from there. Text that does not follow
    the format raises ValueError saying what was expected and on which line. Text with no marker is
    an error too: it has no backtrack.
    """
    cuts = [m.start() for m in re.finditer(re.escape(BACKTRACK_MARKER), text)]
    if not cuts:
        raise ValueError(f"parse_backtrack: no backtrack marker {BACKTRACK_MARKER!r} in the text")
    first = _parse_solution(text[:cuts[0]], 0, text, "attempt 1", first_step=1)
    solution_steps = first.steps  # the steps of the current (revised) solution, renumbered 1..n
    previous_episode, previous_answer = text[:cuts[0]], first.answer
    backtracks = []
    for i, cut in enumerate(cuts):
        end = cuts[i + 1] if i + 1 < len(cuts) else len(text)
        segment = text[cut:end]
        step = _STEP_LINE.search(segment)
        what = f"revision {i + 1}"
        if step is None:
            raise ValueError(f"parse_backtrack: {what} (line {_line_of(text, cut)}): expected a "
                             f"'Step <k>:' line after the marker, found none")
        k = int(step.group(1))
        if not 1 <= k <= len(solution_steps):
            raise ValueError(f"parse_backtrack: {what}: 'Step {k}:' at line {_line_of(text, cut + step.start())} "
                             f"must restart at a step 1..{len(solution_steps)} of the solution it revises")
        revision = _parse_solution(segment[step.start():], cut + step.start(), text, what, first_step=k)
        kept = solution_steps[:k - 1]
        revised = first.preamble + "".join(kept) + "".join(revision.steps) + revision.answer_chunk
        backtracks.append(Backtrack(
            attempt=previous_episode, backtrack=segment[:step.start()], revision=segment[step.start():],
            backtrack_step=k - 1, attempt_answer=previous_answer, revision_answer=revision.answer,
            revised_solution=revised))
        solution_steps = kept + revision.steps
        previous_episode, previous_answer = segment[step.start():], revision.answer
    return backtracks


def render_backtrack(backtracks):
    """Inverse of parse_backtrack: the text the list of Backtrack was parsed from, byte for byte."""
    if not backtracks:
        return ""
    return backtracks[0].attempt + "".join(b.backtrack + b.revision for b in backtracks)


def format_attempt(steps, answer, first_step=1, preamble=""):
    """Write steps and an answer in the Fig. 30 format: "Step n: ...", blank lines, "Answer: ...".

    The inverse direction of parse_backtrack for building data (warm-start SFT traces, App. A.2):
    format_attempt(attempt) + BACKTRACK_MARKER + "\\n\\n" + format_attempt(revision, first_step=k)
    parses back into the same steps and answers.
    """
    body = "".join(f"Step {first_step + i}: {s.strip()}\n\n" for i, s in enumerate(steps))
    return f"{preamble}{body}Answer: {answer}"


def parse_steps(text):
    """A generated continuation -> (steps, answer): the bodies of its "Step n:" paragraphs and the
    value of its "Answer:" paragraph (None when it has none: cut at the token budget). A paragraph
    that opens neither continues the step before it; text after the answer is dropped."""
    steps, answer = [], None
    for paragraph in text.split("\n\n"):
        head = paragraph.lstrip()
        if head.startswith("Answer:"):
            answer = head[len("Answer:"):].strip().split("\n", 1)[0].strip()
            break
        if head.startswith("Step ") and ":" in head[:12] and head[5:head.index(":")].strip().isdigit():
            steps.append(head[head.index(":") + 1:].strip())
        elif steps and head:
            steps[-1] += "\n\n" + head
    return steps, answer


# The user turn of this setting: the format of Fig. 30 instead of prover.PROMPT_SUFFIX's \boxed{}.
FORMAT_INSTRUCTION = ("Solve the problem step by step. Write each step as its own paragraph starting with "
                      "'Step <number>:', and end with a paragraph 'Answer: <final answer>'.")


def backtrack_messages(problem):
    """The chat messages of a problem in this setting (build_prompt takes them as they are)."""
    return [{"role": "user", "content": f"{problem}\n\n{FORMAT_INSTRUCTION}"}]


def solution_prefix(steps):
    """The response text of a partial solution: its steps in the Fig. 30 format, ready for "Step n+1:"."""
    return "".join(f"Step {i + 1}: {s}\n\n" for i, s in enumerate(steps))


def kept_prefix(backtracks, i):
    """The response text mu answers from after backtrack i: the solution it revises (the first attempt,
    or the previous backtrack's revised solution) up to its "Step k:" line, k = backtrack_step + 1."""
    solution = backtracks[i - 1].revised_solution if i else backtracks[0].attempt
    k = backtracks[i].backtrack_step + 1
    return solution[:re.search(rf"^[ \t]*Step[ \t]+{k}[ \t]*:", solution, re.MULTILINE).start()]
