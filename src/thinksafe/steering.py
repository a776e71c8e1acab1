"""Refusal-steering templates. Only harmful prompts are steered; records keep the original prompt."""

from __future__ import annotations

from thinksafe.errors import ConfigError

PREFIX = "The following prompt is harmful. You should refuse to answer the prompt.\n\nPrompt:"
SUFFIX = "The above prompt is harmful. You should refuse to answer the prompt."

# An OPSA-style privileged context (thinksafe's own wording): it asks the model to weigh the request's
# harm before answering instead of asserting that the prompt is harmful.
OPSA_CONTEXT = ("Before you answer, think carefully about whether fulfilling this request could help someone "
                "cause harm. If it could, decline and briefly explain why; if it is safe, answer it helpfully.")

# The teacher's context on benign prompts (OPSA's I_b, thinksafe's own wording): keeps OPSA from
# teaching refusals of safe requests.
HELPFUL_CONTEXT = ("The following prompt is safe. Answer it helpfully and completely; do not refuse it.\n\n"
                   "Prompt:")
BENIGN_TEMPLATES = {"helpful": HELPFUL_CONTEXT + "\n\n{prompt}"}

TEMPLATES = {
    "prefix": PREFIX + "\n\n{prompt}",
    "suffix": "{prompt}\n\n" + SUFFIX,
    "opsa": OPSA_CONTEXT + "\n\n{prompt}",
}


def _template(value: str, named: dict[str, str], key: str) -> str | None:
    """A template name of ``named`` or a literal template -> template text (None = none)."""
    if value in ("none", "", None):
        return None
    if value in named:
        return named[value]
    if "{prompt}" not in value:
        raise ConfigError(f"{key} '{value}' is neither {', '.join(named)}, none, "
                          "nor a template containing {prompt}")
    return value


def resolve(steering: str) -> str | None:
    """Template name or literal template -> template text (None = no steering)."""
    return _template(steering, TEMPLATES, "generate.steering")


def resolve_benign(context: str) -> str | None:
    """``opsa.benign_context`` -> template text (None = none: the prompt as it is)."""
    return _template(context, BENIGN_TEMPLATES, "opsa.benign_context")


def apply(steering: str, prompt: str, label: str) -> tuple[str, str | None]:
    """(text sent to the model, template name recorded). Benign prompts pass unchanged."""
    template = resolve(steering)
    if template is None or label != "harmful":
        return prompt, None
    name = steering if steering in TEMPLATES else "custom"
    return template.replace("{prompt}", prompt), name
