"""PII redaction with stable placeholders: emails, IP addresses, phone numbers, and secrets in code.

Every match is replaced by a fixed placeholder (``<EMAIL>``, ``<IP_ADDRESS>``, ``<PHONE>``, ``<SECRET>``), so
output is deterministic, dedup still sees equal texts as equal, and redacting twice changes nothing (no
placeholder matches any pattern). Following the BigCode PII pipeline, IP addresses that are not globally
routable (private, loopback, link-local, documentation ranges) are left alone by default: they identify no one.

Why regexes and not ``detect-secrets`` (which BigCode used): its plugins scan line by line and report the
secret's value, not its span, and cost several times more per file; the token formats below are the
documented, fixed-prefix formats of each provider (the same ones detect-secrets and gitleaks match), applied
in one pass each over the whole text. The generic rule catches ``password = "..."``-style assignments,
``url_credentials`` the password of ``scheme://user:password@host`` and ``password_assignment`` config-file
lines (``password=...``, ``PASSWORD: ...``, ``passwd``, ``pwd``), quoted or not, ``password_flag``
``--password=...`` on command lines.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Callable, Iterator

from data_pipelines.document import Document
from data_pipelines.filters.base import DocumentFilter, add_extra, invalid
from data_pipelines.native import compiled as _native  # None: one `in` test per marker
from data_pipelines.stats import StageStats

PLACEHOLDERS = {"email": "<EMAIL>", "ip": "<IP_ADDRESS>", "phone": "<PHONE>", "secret": "<SECRET>"}
KINDS = ("secret", "email", "ip", "phone")  # application order: a secret may contain an "@" or digits

EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,24}"
    r"(?![\w-])"
)
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\w|\.\d)")
# Candidates only: ``_is_ipv6_match`` and ``ipaddress`` decide.
IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|" + _OCTET + r"(?:\." + _OCTET +
                  r"){3})?(?![\w:])")
PHONE = re.compile(
    r"(?<![\w+-])(?:"
    r"\+\d{1,3}(?:[ .-]?\(\d{1,4}\))?(?:[ .-]?\d{1,4}){2,5}"  # international: +44 20 7946 0958
    r"|(?:1[ .-])?(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4}"  # North American: (415) 555-2671, 415.555.2671
    r")(?![\w-]|[.]\d)"
)
_DIGITS = re.compile(r"\d")
# Cheap pre-checks: a substring every match of the pattern contains. No candidate: the pattern's pass is
# skipped. ``re`` finds a pattern that starts with a literal character by a fast substring search, while one
# that starts with a look-behind or a character class is tried at every position (3-10x slower on prose), so
# each check first scans for a literal-led piece that every candidate contains, then for the candidate.
_EMAIL_CANDIDATE = re.compile(r"[A-Za-z0-9._%+-]@[A-Za-z0-9]")  # not "@property" or " @ "
_IPV4_CANDIDATE = re.compile(r"\d\.\d{1,3}\.\d{1,3}\.\d")  # four octets of 1-3 digits (not "3.11" or "1.2.3")
# two groups of "hex:" where IPV6 may start (not "e.g.::" or "value::", reST's literal blocks)
_IPV6_CANDIDATE = re.compile(r"(?<![\w:.])[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:")
# "+" and the country code where PHONE may start, or the last 3 + 4 digits where it may end
_PHONE_CANDIDATE = re.compile(r"(?<![\w+-])\+\d|\d\d\d[ .-]\d\d\d\d(?![\w-]|[.]\d)")
_LITERAL_LED = {
    "email": (re.compile(r"@[A-Za-z0-9]"),),
    "ipv4": (re.compile(r"\.\d{1,3}\.\d{1,3}\.\d"),),
    "ipv6": (re.compile(":"),),
    "phone": (re.compile(r"\+\d"), re.compile(r"-\d{4}"), re.compile(r"\.\d{4}"), re.compile(r" \d{4}")),
}


# the bit of each candidate pattern in data_pipelines._native.pii_candidates (one compiled pass for all four)
_CANDIDATE_BITS = {"email": 1, "ipv4": 2, "ipv6": 4, "phone": 8}


def _candidate(kind: str, pattern: re.Pattern[str], text: str) -> bool:
    """Whether ``pattern`` (a ``_*_CANDIDATE``) occurs in ``text``; one of ``_LITERAL_LED[kind]`` must first."""
    return any(p.search(text) for p in _LITERAL_LED[kind]) and pattern.search(text) is not None


# Dotted numbers right after these words are versions or section numbers ("version 7.1.4.34"), not hosts.
_VERSION_CONTEXT = re.compile(r"\b(?:version|release|section|sections|v|ver\.?|rfc)[\s\"'(\[]*$", re.IGNORECASE)


@dataclass(frozen=True)
class SecretRule:
    """A secret format. It only runs on texts containing one of its literal ``markers`` (a substring test
    costs next to nothing, a regex pass over a whole file does not). The whole match is the secret unless the
    pattern has a group named ``value``; then only that group is replaced. ``lowercase`` rules are matched
    against ``text.lower()`` with a lower-case pattern, 10x faster than ``re.IGNORECASE`` in CPython."""

    name: str
    markers: tuple[str, ...]
    pattern: re.Pattern[str]
    lowercase: bool = False


# Substrings one of which a password assignment or flag contains ("pass" alone is in every Python file).
_PASSWORD_MARKERS = ("password", "Password", "PASSWORD", "passwd", "Passwd", "PASSWD", "pwd", "Pwd", "PWD")

SECRET_RULES: list[SecretRule] = [
    SecretRule("private_key", ("PRIVATE KEY",), re.compile(
        r"-----BEGIN[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----.*?(?:-----END[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----|\Z)",
        re.DOTALL)),
    SecretRule("aws_access_key", ("AKIA", "ASIA", "ABIA", "ACCA", "A3T"),
               re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{16}(?![A-Z0-9])")),
    SecretRule("github_token", ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
               re.compile(r"(?<!\w)(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})")),
    SecretRule("gitlab_token", ("glpat-",), re.compile(r"(?<!\w)glpat-[A-Za-z0-9_-]{20}(?![\w-])")),
    SecretRule("slack_token", ("xox",), re.compile(r"(?<!\w)xox[abposr]-[A-Za-z0-9-]{10,250}")),
    SecretRule("slack_webhook", ("hooks.slack.com",),
               re.compile(r"https://hooks\.slack\.com/services/T[A-Za-z0-9_]+/B[A-Za-z0-9_]+/[A-Za-z0-9_]+")),
    SecretRule("stripe_key", ("_live_", "_test_"),
               re.compile(r"(?<!\w)(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,247}(?!\w)")),
    SecretRule("google_api_key", ("AIza",), re.compile(r"(?<![\w-])AIza[0-9A-Za-z_-]{35}(?![\w-])")),
    SecretRule("openai_key", ("T3BlbkFJ",),
               re.compile(r"(?<![\w-])sk-(?:[A-Za-z0-9_-]*-)?[A-Za-z0-9_-]{8,}T3BlbkFJ[A-Za-z0-9_-]{8,}")),
    SecretRule("anthropic_key", ("sk-ant-",), re.compile(r"(?<![\w-])sk-ant-[A-Za-z0-9_-]{32,}")),
    SecretRule("huggingface_token", ("hf_",), re.compile(r"(?<!\w)hf_[A-Za-z]{34}(?!\w)")),
    SecretRule("jwt", ("eyJ",),
               re.compile(r"(?<![\w-])eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")),
    # name = "value" / name: 'value' / "name": "value" / name := "value" where the name ends in a secret word
    # (any case: apiKey, API_KEY, db_password...).
    SecretRule("assignment", (), re.compile(
        r"(?:api[_-]?key|apikey|secret(?:[_-]?key)?|access[_-]?key(?:[_-]?id)?|private[_-]?key"
        r"|client[_-]?secret|token|passw(?:or)?d|passwd|pwd)"
        r"[\"']?[ \t]*(?::=|=>|=|:)[ \t]*[bru]?(?P<quote>[\"'])(?P<value>[^\"'\s\\]{8,256})(?P=quote)"),
        lowercase=True),
    # KEY=value lines of .env files and shell scripts: upper-case names, no spaces, a value with a digit
    # (so "TOKEN=production" or Python's "cache_token = None" are left alone).
    SecretRule("env_assignment", ("=",), re.compile(
        r"(?m)^[ \t]*(?:export[ \t]+)?[A-Z0-9_]*"
        r"(?:API_?KEY|SECRET(?:_?KEY)?|ACCESS_?KEY(?:_?ID)?|PRIVATE_?KEY|TOKEN|PASSWORD|PASSWD|PWD)"
        r"=(?P<value>(?=[^\s\"'#]*\d)[A-Za-z0-9_+/=.:~-]{8,256})[ \t]*$")),
    # scheme://user:password@host (database URLs, git remotes, proxies): the password is replaced, the user and
    # host kept. The password runs to the last "@" before the host, as URL parsers read it. (A fixed-width
    # look-behind for the end of the scheme: matching the scheme itself from every letter costs 2x more.)
    SecretRule("url_credentials", ("://",), re.compile(
        r"(?<=[A-Za-z0-9+.-]://)[^\s:/?#@\"'<>\[\]]{0,256}"
        r":(?P<value>[^\s/\"'<>]{1,256})@(?=[A-Za-z0-9\[])")),
    # Config-file lines that set a password, quoted or not: password=..., PASSWORD: ..., db.passwd = ...,
    # pwd: ... (ini, properties, YAML, TOML, .env). The value must end the line (a comment may follow), so
    # code such as `password = os.environ["PW"]` or `pwd = os.getcwd()` is left alone; an unquoted value also
    # needs a digit or a symbol (_PASSWORD_SYMBOL), so `password = None` is too.
    SecretRule("password_assignment", _PASSWORD_MARKERS, re.compile(
        r"(?m)^[ \t]*(?:export[ \t]+|-[ \t]+)?[\"']?[a-z0-9_.-]*(?:password|passwd|pwd)[\"']?[ \t]*[=:][ \t]*"
        r"(?:(?P<quote>[\"'])(?P<quoted>[^\s\"']{1,256})(?P=quote)|(?P<value>[^\s\"'()\[\]{}<>,`]{1,256}))"
        r"[ \t]*(?:[#;].*)?$"), lowercase=True),
    # Command-line flags: mysql --password=pa55 -u root, --db-passwd=...
    SecretRule("password_flag", _PASSWORD_MARKERS, re.compile(
        r"(?<![\w-])--?[a-z0-9_-]*(?:password|passwd|pwd)=(?P<value>[^\s\"'`$()<>]{1,256})(?![^\s])"),
        lowercase=True),
]
# rules whose unquoted value must look like a password (a digit or a symbol), not like a word or a variable
_PASSWORD_SHAPED = {"password_assignment"}
_PASSWORD_SYMBOL = re.compile(r"[0-9!@#$%^&*+=?~/\\|-]")
# printf/format fields in templates (password:%s, pwd={}), never a value, for the rules added with these
_FORMAT_FIELD_RULES = {"url_credentials", "password_assignment", "password_flag"}
_FORMAT_FIELD = re.compile(r"^(?:%[-#0 +]*\d*(?:\.\d+)?[sdrifx]|\{[^{}]*\})$")
# Values that are references or stand-ins, not secrets: ${VAR}, {{ var }}, %(var)s, <placeholder>, xxxx...
_NOT_A_SECRET = re.compile(
    r"^(?:<[^>]*>|\$\{?[\w.]+\}?|\{\{.*\}\}|%\(\w+\)s|\*+|x+|X+|\.+|your[_-].*|.*(?:example|placeholder|changeme|"
    r"redacted|dummy|xxxx).*)$",
    re.IGNORECASE,
)


def _is_ip(candidate: str, redact_private: bool) -> bool:
    try:
        ip = ipaddress.ip_address(candidate)
    except ValueError:
        return False
    if redact_private:
        return True
    return ip.is_global and not ip.is_multicast


def _is_ipv4_match(m: re.Match[str], redact_private: bool) -> bool:
    return _is_ip(m.group(0), redact_private) and not _VERSION_CONTEXT.search(m.string, max(0, m.start() - 16),
                                                                               m.start())


def _is_ipv6_match(m: re.Match[str], redact_private: bool) -> bool:
    """At least three groups and a digit: keeps C++ ``a::b`` and hex words out; ``ipaddress`` decides the rest."""
    candidate = m.group(0)
    groups = [g for g in candidate.split(":") if g]
    return len(groups) >= 3 and _DIGITS.search(candidate) is not None and _is_ip(candidate, redact_private)


def _is_phone_match(m: re.Match[str]) -> bool:
    return 7 <= len(_DIGITS.findall(m.group(0))) <= 15  # E.164 numbers have at most 15 digits


class PIIRedactor(DocumentFilter):
    """Redact ``kinds`` (any of email, ip, phone, secret) in place; never drops a document.

    Each kind found in a document counts once as ``stats.modify("pii_<kind>")``; the number of replacements
    per kind (and per secret pattern) goes to ``stats.extra["pii_redactions"]`` / ``["pii_secrets"]``.
    """

    name = "pii"

    def __init__(self, *, kinds: list[str] | None = None, redact_private_ips: bool = False,
                 secret_patterns: list[str] | None = None):
        kinds = ["email", "ip", "phone"] if kinds is None else list(kinds)
        unknown = sorted(set(kinds) - set(KINDS))
        if unknown:
            raise invalid("kinds", unknown, f"a list drawn from {', '.join(KINDS)}")
        known = [rule.name for rule in SECRET_RULES]
        patterns = known if secret_patterns is None else list(secret_patterns)
        unknown = sorted(set(patterns) - set(known))
        if unknown:
            raise invalid("secret_patterns", unknown, f"a list drawn from {', '.join(known)}")
        self.kinds = [k for k in KINDS if k in kinds]
        self.redact_private_ips = redact_private_ips
        self.secret_patterns = [name for name in known if name in patterns]
        self._secret_rules = [rule for rule in SECRET_RULES if rule.name in self.secret_patterns]
        # every rule's markers, for one compiled scan of a text (bit i: _markers[i] occurs)
        self._markers = tuple(dict.fromkeys(m for rule in self._secret_rules for m in rule.markers))
        self._marker_bits = [sum(1 << self._markers.index(m) for m in rule.markers) for rule in self._secret_rules]

    def redact(self, text: str) -> tuple[str, dict[str, int], dict[str, int]]:
        """Redacted text, replacements per kind, and secrets per pattern name."""
        per_kind: dict[str, int] = {}
        per_secret: dict[str, int] = {}

        def sub(kind: str, pattern: re.Pattern[str], text: str, accept: Callable[[re.Match[str]], bool]) -> str:
            placeholder = PLACEHOLDERS[kind]

            def replace(m: re.Match[str]) -> str:
                if not accept(m):
                    return m.group(0)
                per_kind[kind] = per_kind.get(kind, 0) + 1
                return placeholder

            return pattern.sub(replace, text)

        scanned: list = [None, 0]  # the text the compiled candidate scan last saw, and its bits

        def candidate(kind: str, pattern: re.Pattern[str], text: str) -> bool:
            if _native is None:
                return _candidate(kind, pattern, text)
            if scanned[0] is not text:  # the text as it is now: a replacement may add or remove candidates
                scanned[:] = text, _native.pii_candidates(text)
            return bool(scanned[1] & _CANDIDATE_BITS[kind])

        private = self.redact_private_ips
        for kind in self.kinds:
            if kind == "secret":
                text = self._redact_secrets(text, per_kind, per_secret)
            elif kind == "email":
                if candidate("email", _EMAIL_CANDIDATE, text):
                    text = sub("email", EMAIL, text, lambda m: True)
            elif kind == "ip":
                if candidate("ipv4", _IPV4_CANDIDATE, text):
                    text = sub("ip", IPV4, text, lambda m: _is_ipv4_match(m, private))
                if candidate("ipv6", _IPV6_CANDIDATE, text):
                    text = sub("ip", IPV6, text, lambda m: _is_ipv6_match(m, private))
            elif kind == "phone":
                if candidate("phone", _PHONE_CANDIDATE, text):
                    text = sub("phone", PHONE, text, _is_phone_match)
        return text, per_kind, per_secret

    def _redact_secrets(self, text: str, per_kind: dict[str, int], per_secret: dict[str, int]) -> str:
        placeholder = PLACEHOLDERS["secret"]
        scan = _native is not None and len(self._markers) <= 64
        present = None  # the markers in the text as it is now (rescanned after a rule replaced something)
        for rule, bits in zip(self._secret_rules, self._marker_bits):
            if rule.markers:
                if scan:
                    if present is None:
                        present = _native.markers_in(text, self._markers)
                    if not present & bits:
                        continue
                else:
                    for marker in rule.markers:
                        if marker in text:
                            break
                    else:
                        continue
            pieces: list[str] = []
            pos = 0
            for start, end in self._secret_spans(rule, text):
                pieces += [text[pos:start], placeholder]
                pos = end
                per_kind["secret"] = per_kind.get("secret", 0) + 1
                per_secret[rule.name] = per_secret.get(rule.name, 0) + 1
            if pieces:
                text = "".join(pieces) + text[pos:]
                present = None
        return text

    @staticmethod
    def _secret_spans(rule: SecretRule, text: str) -> Iterator[tuple[int, int]]:
        """Spans of ``text`` to replace; values that are references or stand-ins are skipped."""
        haystack = text
        pattern = rule.pattern
        if rule.lowercase:
            haystack = text.lower()
            if len(haystack) != len(text):  # a few characters ("İ") lower to two: spans would shift
                haystack, pattern = text, re.compile(pattern.pattern, pattern.flags | re.IGNORECASE)
        has_value = "value" in pattern.groupindex
        has_quoted = "quoted" in pattern.groupindex
        for m in pattern.finditer(haystack):
            if not has_value:
                yield m.span()
                continue
            group = "quoted" if has_quoted and m.start("quoted") >= 0 else "value"
            start, end = m.span(group)
            value = text[start:end]
            if value == PLACEHOLDERS["secret"] or _NOT_A_SECRET.match(value):
                continue
            if group == "value" and rule.name in _PASSWORD_SHAPED and not _PASSWORD_SYMBOL.search(value):
                continue  # password = None / pwd: str / password = request.form: a name, not a secret
            if rule.name in _FORMAT_FIELD_RULES and _FORMAT_FIELD.match(value):
                continue
            yield start, end

    def apply(self, doc: Document, stats: StageStats) -> str | None:
        text, per_kind, per_secret = self.redact(doc.text)
        if per_kind:
            doc.text = text
            for kind in sorted(per_kind):
                stats.modify(f"pii_{kind}")
            add_extra(stats, "pii_redactions", per_kind)
            add_extra(stats, "pii_secrets", per_secret)
        return None
