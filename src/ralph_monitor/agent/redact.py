"""Secret-shaped text replaced before anything leaves the agent's machine.

Tool inputs and outputs (a `Bash` command running `export API_KEY=...`, a `.env` file read by
a tool, a `curl -H "Authorization: Bearer ..."`) would otherwise be stored as sent. The hook,
the loop wrapper and `ralph-monitor import claude-code` pass every string through a
`Redactor` first; each match becomes `[REDACTED:<kind>]` and is counted, so an event says how
many secrets were taken out of it (`data.redactions`).

What is recognised: API keys and tokens of the major providers by their documented prefixes
(Anthropic, OpenAI, AWS, GitHub, GitLab, Slack, Google, Stripe, Hugging Face, npm, PyPI,
SendGrid, DigitalOcean), JSON web tokens, private key blocks, `Authorization:` headers and
bearer tokens, passwords in URLs, and assignments whose name says what they hold
(`password=`, `DB_PASSWORD:`, `"api_key": "..."`, `GITHUB_TOKEN=`). Look-alikes are left
alone: a value that is a reference rather than a secret (`$VAR`, `${VAR}`, `os.environ[...]`,
a call, `<placeholder>`, a number, a short word), git hashes, UUIDs, words that merely contain
`sk-`. `[redaction]` in the config adds patterns (the whole match is replaced) or turns it off.

Standard library only (see `ralph_monitor.agent`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

MARK = "[REDACTED:{}]"
MIN_SECRET_CHARS = 8
"""An assigned value shorter than this is not taken for a secret (`password=x` in a test)."""

_TOKEN_BOUNDARY = r"(?<![A-Za-z0-9_\-])"
_END = r"(?![A-Za-z0-9_\-])"
PROVIDER_PATTERNS: dict[str, str] = {
    "anthropic_key": r"sk-ant-(?:api|admin|sid|oat)\d{2}-[A-Za-z0-9_\-]{20,}",
    "openai_key": r"sk-(?:proj-|svcacct-|admin-|None-)?[A-Za-z0-9_\-]{20,}",
    "aws_access_key_id": r"(?:AKIA|ASIA|ABIA|ACCA|AROA|AIDA)[A-Z0-9]{16}",
    "github_token": r"(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{40,255})",
    "gitlab_token": r"gl(?:pat|dt|ptt|rt)-[A-Za-z0-9_\-]{20,}",
    "slack_token": r"xox[abposre]-[A-Za-z0-9\-]{10,}",
    "google_api_key": r"AIza[0-9A-Za-z_\-]{35}",
    "stripe_key": r"(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}|whsec_[A-Za-z0-9]{24,}",
    "huggingface_token": r"hf_[A-Za-z0-9]{30,}",
    "npm_token": r"npm_[A-Za-z0-9]{36}",
    "pypi_token": r"pypi-AgE[A-Za-z0-9_\-]{50,}",
    "sendgrid_key": r"SG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43}",
    "digitalocean_token": r"do[opr]_v1_[a-f0-9]{64}",
    "jwt": r"eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}",
}
PRIVATE_KEY = (r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
               r"(?:[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|[\s\S]*)")
AUTH_SCHEME = r"(?:bearer|basic|token|bot|digest|negotiate|apikey)"
URL_PASSWORD = r"\b([A-Za-z][A-Za-z0-9+.\-]{1,20}://[^\s:/@\"'<>]{1,100}:)([^\s@/\"'<>]{1,200})(@)"
SECRET_NAME = (r"(?:password|passwd|passphrase|secret|token|api[_\-]?key|apikey|access[_\-]?key|private[_\-]?key|"
               r"credentials?|auth[_\-]?key)(?:[_\-]?(?:key_base|key|base|value|salt))?")
"""The end of a name that says it holds a secret (DB_PASSWORD, secret_key_base, "apiKey")."""


def _any_case(pattern: str) -> str:
    """`pattern` with each ASCII letter made a [xX] class: as IGNORECASE, ten times faster in `re`."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isascii() and c.isalpha() else c for c in pattern)


AUTH_HEADER = (r"\b((?:" + _any_case("proxy-") + r")?" + _any_case("authorization") + r"[\"']?\s*[:=]\s*[\"']?(?:"
               + _any_case(AUTH_SCHEME) + r"\s+)?)([^\s\"',;]{6,})")
BEARER = r"\b(" + _any_case("bearer") + r"\s+)([A-Za-z0-9._~+/=\-]{16,})"
ASSIGNMENT = (r"(" + _any_case(SECRET_NAME) + r"[\"']?\s*(?::=|=|:)\s*)"
              r"(\"[^\"\n]*\"|'[^'\n]*'|[^\s\"',;&|)}\]]+)")
_NOT_A_SECRET = re.compile(
    r"""^(?:
        \$.*                                   # $VAR, ${VAR}, $(cmd): a reference
      | .*[()\[\]{}].*                         # a call, an index, a template: code
      | <[^>]*>                                # <placeholder>
      | [-+]?\d+(?:\.\d+)?                     # a number (max_tokens=4096)
      | (?:none|null|nil|true|false|undefined|required|optional|string|str|int|bytes|redacted|x+|\*+|\.+)
      | \[REDACTED:[a-z_]+\]
      | [A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_.]*   # settings.SECRET_KEY, args.token: an attribute
    )$""", re.IGNORECASE | re.VERBOSE)


class Redactor:
    """Replaces secret-shaped text in strings; `count` says how many it replaced so far."""

    def __init__(self, *, enabled: bool = True, extra_patterns: Iterable[str] = ()) -> None:
        self.enabled = enabled
        self.count = 0
        providers = "|".join(f"(?P<{kind}>{pattern})" for kind, pattern in PROVIDER_PATTERNS.items())
        self._providers = re.compile(f"{_TOKEN_BOUNDARY}(?:{providers}){_END}")
        self._private_key = re.compile(PRIVATE_KEY)
        self._keeping_prefix: list[tuple[str, re.Pattern[str], Callable[[str], bool]]] = [
            ("authorization", re.compile(AUTH_HEADER), _looks_credential),
            ("bearer_token", re.compile(BEARER), _looks_credential),
            ("url_password", re.compile(URL_PASSWORD), _looks_url_password),
            ("assignment", re.compile(ASSIGNMENT), _looks_secret),
        ]
        self._custom = [re.compile(p) for p in extra_patterns]
        self._secret_name = re.compile(_any_case(SECRET_NAME) + "$")

    def text(self, value: str) -> str:
        """`value` with every secret replaced."""
        if not self.enabled or len(value) < MIN_SECRET_CHARS:
            return value
        value = self._private_key.sub(self._whole("private_key"), value)
        value = self._providers.sub(self._provider, value)
        for kind, pattern, check in self._keeping_prefix:
            value = pattern.sub(self._value_only(kind, check), value)
        for pattern in self._custom:
            value = pattern.sub(self._whole("custom"), value)
        return value

    def named(self, name: str, value: str) -> str:
        """`value` whole, if `name` says it holds a secret ({"DB_PASSWORD": "..."}) and it
        looks like one; else `value` as it is (run `text` on it for the shapes)."""
        if not self.enabled or not name or self._secret_name.search(name) is None or not _looks_secret(value):
            return value
        self.count += 1
        return MARK.format("named")

    def value(self, value: Any, name: str = "") -> Any:
        """A JSON-like value with every string in it redacted (`named` for dict entries)."""
        if isinstance(value, str):
            return self.named(name, self.text(value))
        if isinstance(value, dict):
            return {k: self.value(v, str(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v, name) for v in value]
        return value

    def _whole(self, kind: str) -> Callable[[re.Match[str]], str]:
        def replace(match: re.Match[str]) -> str:
            self.count += 1
            return MARK.format(kind)
        return replace

    def _provider(self, match: re.Match[str]) -> str:
        kind = match.lastgroup or "token"
        if kind == "openai_key" and not _mixed(match.group(0)[3:]):
            return match.group(0)  # sk-some-long-hyphenated-words is not a key
        self.count += 1
        return MARK.format(kind)

    def _value_only(self, kind: str, check: Callable[[str], bool]) -> Callable[[re.Match[str]], str]:
        def replace(match: re.Match[str]) -> str:
            secret = match.group(2)
            if not check(secret):
                return match.group(0)
            self.count += 1
            quote = secret[0] if secret[:1] in ("'", '"') and secret[-1:] == secret[0] and len(secret) > 1 else ""
            tail = match.group(3) if match.lastindex and match.lastindex >= 3 else ""
            return f"{match.group(1)}{quote}{MARK.format(kind)}{quote}{tail}"
        return replace


def _mixed(text: str) -> bool:
    """Letters and digits both: keys are random, hyphenated words are not."""
    return any(c.isdigit() for c in text) and any(c.isalpha() for c in text)


def _looks_secret(value: str) -> bool:
    inner = value[1:-1] if value[:1] in ("'", '"') and value[-1:] == value[:1] and len(value) > 1 else value
    inner = inner.strip()
    if len(inner) < MIN_SECRET_CHARS or "[REDACTED:" in inner:
        return False
    return _NOT_A_SECRET.match(inner) is None


def _looks_credential(value: str) -> bool:
    """After `Authorization:` or `Bearer`: anything but a reference or a placeholder."""
    return len(value) >= MIN_SECRET_CHARS and not value.startswith(("$", "<", "[REDACTED:")) \
        and value.strip("x*.") != ""


def _looks_url_password(value: str) -> bool:
    return not value.startswith("$") and not (value.startswith("<") and value.endswith(">")) and "*" not in value \
        and value.lower() not in ("password", "pass", "pwd", "secret")


def redactor_from_config(config: dict[str, Any]) -> Redactor:
    """The Redactor `[redaction]` of a parsed config file asks for (enabled, patterns);
    bad entries fall back to the defaults (the agent side never fails on config)."""
    section = config.get("redaction") if isinstance(config, dict) else None
    if not isinstance(section, dict):
        return Redactor()
    enabled = section.get("enabled", True)
    patterns = section.get("patterns", [])
    good = []
    for pattern in patterns if isinstance(patterns, list) else []:
        try:
            re.compile(pattern)
        except (re.error, TypeError):
            continue
        good.append(pattern)
    return Redactor(enabled=enabled is not False, extra_patterns=good)
