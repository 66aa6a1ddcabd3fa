"""Errors a user can act on.

Every error that is the user's to fix (a missing file, a tensor of the wrong shape, an
unreadable image) is an `OpenGPT4Error`: the CLI prints its message on one line and exits
with status 1 instead of dumping a traceback. Bugs stay ordinary exceptions.
"""


class OpenGPT4Error(Exception):
    """Base class: the message names the thing that is wrong."""


class ConfigError(OpenGPT4Error, ValueError):
    """An invalid model or vision configuration."""


class CheckpointError(OpenGPT4Error):
    """A checkpoint directory that is missing, corrupt or does not match its config."""


class ImageError(OpenGPT4Error, ValueError):
    """An image that cannot be read, or image placeholders that do not match the images."""


class TokenizerError(OpenGPT4Error, ValueError):
    """Bad tokenizer input: an unknown role, a malformed chat message."""


class DataFileError(OpenGPT4Error, ValueError):
    """A data file (JSONL, versioned JSON) that is missing or malformed; the message names the file and line."""


class ChatDataError(DataFileError):
    """A conversation that cannot be trained on (no assistant turn, an empty one, an unknown role...):
    names the file:line."""


class PairTooLong(DataFileError):
    """A preference pair whose prompt and response do not fit the model's context (or the run's
    max_len): cutting it would score a response without its question or without its end."""

    def __init__(self, where: str, tokens: int, limit: int) -> None:
        self.where, self.tokens, self.limit = where, tokens, limit  # "file:line", the longer side's tokens
        super().__init__(f"{where}: the prompt and response are {tokens} tokens, over the limit of {limit} "
                         "(the model's context, or max_len); shorten or drop the pair, or skip and count such "
                         "pairs with --set skip_too_long=true")


class UnknownConstraint(OpenGPT4Error, ValueError):
    """A system-message constraint id that `opengpt4.data.chat.constraints` does not know."""

    def __init__(self, constraint_id: str, known: list[str]) -> None:
        self.constraint_id, self.known = constraint_id, list(known)
        super().__init__(f"unknown constraint id {constraint_id!r}; known: {', '.join(self.known)}")


class BenchmarkDataMissing(OpenGPT4Error):
    """A benchmark's data file is not where the eval looks: names the file, where to get it and how to point at it."""

    def __init__(self, file: str, relative: str, source: str) -> None:
        self.file, self.relative, self.source = file, relative, source  # the path looked at, under the data dir, URL
        super().__init__(f"benchmark data file not found: {file} (public source: {source}; point --data-dir or "
                         f"OPENGPT4_DATA_DIR at a folder that holds {relative})")


# --- requests refused: raised where the fact is known, mapped to HTTP statuses in serve/app.py ---
class InvalidRequest(OpenGPT4Error, ValueError):
    """A request that cannot be served as asked: an empty prompt, an option out of range or not
    supported. `param` names the offending field, `code` says why for programs."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param, self.code = param, code


class ContextLengthExceeded(OpenGPT4Error, ValueError):
    """The prompt plus the tokens asked for do not fit the context. `max_tokens` None: the prompt
    is only scored (echo), so the prompt alone must fit."""

    def __init__(self, limit: int, prompt_tokens: int, max_tokens: int | None = None) -> None:
        self.limit, self.prompt_tokens, self.max_tokens = limit, prompt_tokens, max_tokens
        if max_tokens is None:
            asked = f"{prompt_tokens} tokens to score"
        else:
            asked = (f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, "
                     f"{max_tokens} in the completion)")
        super().__init__(f"This model's maximum context length is {limit} tokens. However, you requested {asked}.")


class QueueFull(OpenGPT4Error):
    """Too many requests are waiting for a batch slot; the client retries later."""


class Unavailable(OpenGPT4Error):
    """The server cannot take the request now, through no fault of it: the model's scheduler
    has stopped (shutting down, or its thread died), or the rate-limit storage is unreachable.
    `code` says which, for programs."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class RateLimited(OpenGPT4Error):
    """Over one of a key's per-minute limits. `kind`: which one, "requests" or "tokens";
    `retry_after`: seconds until a retry can pass (None: never, the request alone is over the
    limit); `headers`: the key's x-ratelimit-* headers (and retry-after) to answer with."""

    def __init__(self, message: str, *, kind: str, retry_after: int | None, headers: dict[str, str]) -> None:
        super().__init__(message)
        self.kind, self.retry_after, self.headers = kind, retry_after, headers


class ModelNotFound(OpenGPT4Error):
    """A model name that no served model answers to."""

    param = "model"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model `{model}` does not exist or you do not have access to it.")
        self.model = model


class InvalidAPIKey(OpenGPT4Error):
    """A missing, unknown or revoked API key."""


# --- `opengpt4 run`: refused before the model loads, so a mistake costs no waiting ---
class CannotListen(OpenGPT4Error):
    """The server cannot listen on host:port (an address not of this machine, a privileged port)."""

    def __init__(self, host: str, port: int, reason: str) -> None:
        self.host, self.port, self.reason = host, port, reason
        super().__init__(f"cannot listen on {host}:{port}: {reason}")


class PortInUse(CannotListen):
    """Another process already listens on host:port."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port, "the port is already in use (stop the other server, or pick another port: "
                                     "--port P, or `make run PORT=P`)")


class KeylessPublicHost(OpenGPT4Error):
    """`opengpt4 run` serves without API keys, so it listens on loopback only."""

    def __init__(self, host: str) -> None:
        self.host = host
        super().__init__(f"`opengpt4 run` serves without API keys, so it only listens on loopback "
                         f"(127.0.0.1, ::1, localhost), not {host}: to serve other machines, create a key with "
                         "`opengpt4 keys create NAME` and use `opengpt4 serve --host HOST`")


# --- evals: a registry spec refused before anything is generated ---
class EvalSpecError(OpenGPT4Error, ValueError):
    """An eval spec that cannot run as written. `spec` (the eval's full name) and `file` (its
    YAML) are None while the class is built outside a registry; the registry fills them in."""

    def __init__(self, problem: str, spec: str | None = None, file: str | None = None) -> None:
        self.problem = problem
        super().__init__(problem)
        self.locate(spec, file)

    def locate(self, spec: str | None, file: str | None) -> None:
        self.spec, self.file = spec, file
        where = (f"{file}: " if file else "") + (f"eval {spec!r}: " if spec else "")
        self.args = (where + self.problem,)


class UnknownEvalArgument(EvalSpecError):
    """`args:` the eval class does not take (OpenAI Evals fails on them too, with a TypeError)."""

    def __init__(self, cls: str, arguments: list[str], spec: str | None = None, file: str | None = None) -> None:
        self.cls, self.arguments = cls, list(arguments)
        super().__init__(f"{cls} takes no argument(s) {', '.join(map(repr, self.arguments))}", spec, file)


class InvalidEvalArgument(EvalSpecError):
    """An argument the eval class takes, with a value it cannot run (named by `argument`)."""

    def __init__(self, argument: str, problem: str, spec: str | None = None, file: str | None = None) -> None:
        self.argument = argument
        super().__init__(f"{argument}: {problem}", spec, file)


class UnsupportedEvalClass(EvalSpecError):
    """An OpenAI Evals class with no counterpart here (it needs Hugging Face datasets, solvers, tools…)."""

    def __init__(self, cls: str, supported: list[str], spec: str | None = None, file: str | None = None) -> None:
        self.cls, self.supported = cls, list(supported)
        super().__init__(f"OpenAI Evals class {cls} cannot run in opengpt4 (it needs OpenAI Evals' own code); "
                         f"the classes that can: {', '.join(self.supported)}", spec, file)


# --- training ---
class TrainingStopped(OpenGPT4Error):
    """SIGTERM or Ctrl-C stopped a training run between two steps, after it saved every step done.
    The CLI exits with the shell's status for the signal (128 + its number), as schedulers expect."""

    def __init__(self, signal_name: str, signal_number: int, step: int, out: object, saved: bool) -> None:
        self.exit_status = 128 + signal_number
        where = (f"the checkpoint in {out} holds its {step} steps: continue with --resume" if saved
                 else "no step was done, nothing was saved")
        super().__init__(f"{signal_name} stopped training; {where}")


# --- `opengpt4 scaling`: the sweep and its pre-registered prediction ---
class SweepError(OpenGPT4Error):
    """A sweep that cannot start or finish: another plan in its dir, or runs that failed."""


class PredictionMissing(OpenGPT4Error):
    """No usable pre-registered prediction for the target run: absent, made on other data, or not committed."""


# --- `opengpt4 pipeline` and `opengpt4 report` ---
class PipelineBusy(OpenGPT4Error):
    """Another pipeline holds the directory's lock."""

    def __init__(self, lock: str) -> None:
        super().__init__(f"another `opengpt4 pipeline` is running in this directory ({lock} is locked)")


class PipelineStageFailed(OpenGPT4Error):
    """A stage's command exited non-zero; its log names what went wrong."""

    def __init__(self, stage: str, code: int, log: object, tail: str) -> None:
        self.stage, self.code, self.log = stage, code, log
        super().__init__(f"stage {stage} failed (exit status {code}); its log is {log}; the last lines:\n{tail}")
