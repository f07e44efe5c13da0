"""`auth:`: the credentials a source's requests carry."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from runner.spec.templates import Template


class AuthType(StrEnum):
    BEARER = "bearer"  # Authorization: Bearer <token>
    API_KEY = "api_key"  # a key in a header or a query parameter
    BASIC = "basic"  # Authorization: Basic base64(username:password)
    OAUTH2_CLIENT_CREDENTIALS = "oauth2_client_credentials"  # a token from token_url, renewed at run time
    OAUTH2_REFRESH_TOKEN = "oauth2_refresh_token"  # a token from token_url for a refresh token


class KeyIn(StrEnum):
    HEADER = "header"
    QUERY = "query"


class ClientAuth(StrEnum):
    """How an OAuth2 client authenticates at the token endpoint (RFC 6749 §2.3.1; RFC 7591's names)."""

    POST = "client_secret_post"  # client_id and client_secret as form fields (what most APIs document)
    BASIC = "client_secret_basic"  # Authorization: Basic (id:secret, each form-encoded first)


@dataclass(frozen=True, slots=True, kw_only=True)
class Auth:
    """How every request of the source to its own origin is authenticated (runner/auth.py). Only the
    fields of `type` are set; credentials are templates holding a ${secret.*}."""

    type: AuthType
    token: Template | None = None  # bearer
    name: str | None = None  # api_key: the header or query parameter name
    in_: KeyIn = KeyIn.HEADER  # api_key: YAML `in`
    value: Template | None = None  # api_key
    username: Template | None = None  # basic
    password: Template | None = None  # basic
    token_url: Template | None = None  # oauth2_*
    client_id: Template | None = None  # oauth2_*
    client_secret: Template | None = None  # oauth2_client_credentials (optional for oauth2_refresh_token)
    refresh_token: Template | None = None  # oauth2_refresh_token
    scopes: tuple[str, ...] = ()  # oauth2_*: sent as `scope`, space-separated
    extra: tuple[tuple[str, Template], ...] = ()  # oauth2_*: more form fields of the token request
    client_auth: ClientAuth = ClientAuth.POST  # oauth2_*: where the client id and secret go
    timeout: float | None = None  # oauth2_*: a whole token request; None: the source's request.timeout
    verify_tls: bool | None = None  # oauth2_*: verify the token endpoint's certificate; None: request.verify_tls
    rate_limited: bool = False  # oauth2_*: token requests wait for (and spend) the source's rate limit
    shared: str | None = None  # the block's name in syncrun.yaml's `auth:` (a source's `use:`), else None

    def field(self, key: str) -> str:
        """How a message names one of the block's keys: `auth.client_id`, or where the shared block is."""
        return f"auth.{self.shared}.{key} in syncrun.yaml" if self.shared else f"auth.{key}"

    @property
    def templates(self) -> tuple[Template, ...]:
        single = (self.token, self.value, self.username, self.password, self.token_url)
        more = (self.client_id, self.client_secret, self.refresh_token)
        return tuple(t for t in (*single, *more) if t is not None) + tuple(t for _, t in self.extra)
