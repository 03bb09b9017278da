// Package auth decides who is calling sindri's API and logs users in.
//
// A request carries "Authorization: Bearer TOKEN" where TOKEN is one of
//
//   - the configured shared secret: the caller is the upload user, who may
//     see and manage everything;
//   - an access token minted after an OAuth login (kind store.TokenOAuth):
//     the caller is the user with that e-mail address;
//   - a named API token for CI jobs (kind store.TokenAPI).
//
// Tokens the server mints are "sdr_" followed by 32 random bytes in
// unpadded base64url; only their SHA-256 digest is stored (store.Token.Hash),
// so a copy of the metadata database gives nobody a usable token.
//
// The OAuth login is the Draupnir-compatible flow of the API contract: the
// browser goes through HandleAuthenticate and HandleCallback while the
// client waits in HandleAccessTokens (see oauth.go).
package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/sindri-db/sindri/pkg/config"
	"github.com/sindri-db/sindri/pkg/store"
)

// TokenPrefix starts every token the server mints, so that a leaked one is
// recognisable (secret scanners, logs).
const TokenPrefix = "sdr_"

// tokenBytes is the number of random bytes in a minted token.
const tokenBytes = 32

// DefaultTokenTTL is how long an OAuth access token lives when
// Options.TokenTTL is 0. API tokens never expire unless revoked.
const DefaultTokenTTL = 30 * 24 * time.Hour

// MaxTokenNameLength is the longest API token name.
const MaxTokenNameLength = 64

// maxBearerLength bounds the tokens Authenticate looks at; anything longer
// is no token of ours and no shared secret anyone would configure.
const maxBearerLength = 4096

// UploadOwner is what Principal.Owner returns for the upload user.
const UploadOwner = "upload"

// APITokenOwnerPrefix starts Principal.Owner for a named API token that
// carries no e-mail address. An e-mail address always contains "@" and
// neither this nor UploadOwner does, so owners never collide.
const APITokenOwnerPrefix = "token:"

var (
	// ErrUnauthorized: no usable credential (missing header, another
	// scheme, an unknown, revoked or expired token). The API answers 401
	// "unauthorized". Errors returned by Authenticate wrap it with the
	// reason, for logs; use errors.Is.
	ErrUnauthorized = errors.New("unauthorized")

	// ErrInvalidTokenName: an API token name that is not 1-64 of
	// [a-z0-9-_.].
	ErrInvalidTokenName = errors.New("invalid token name")
)

// Principal is who is calling.
type Principal struct {
	// Email is the user's address (lower case); "" for the upload user
	// and for an API token minted without one.
	Email string
	// Upload is true for the shared secret: the upload user.
	Upload bool
	// TokenID is the id of the token in the store; 0 for the upload user.
	TokenID int64
	// TokenName is an API token's name; "" otherwise.
	TokenName string
	// Kind is the token's kind; "" for the upload user.
	Kind store.TokenKind
}

// Owner is the owner recorded on what the principal creates and matched by
// CanAccess: "upload" for the upload user, the e-mail address when there is
// one (an OAuth user, or an API token minted for a user), else
// "token:NAME" for a named API token.
func (p Principal) Owner() string {
	switch {
	case p.Upload:
		return UploadOwner
	case p.Email != "":
		return p.Email
	case p.TokenName != "":
		return APITokenOwnerPrefix + p.TokenName
	}
	return ""
}

// CanAccess applies the contract's ownership rule: the upload user sees
// every instance, anyone else only those whose owner is theirs.
func (p Principal) CanAccess(owner string) bool {
	if p.Upload {
		return true
	}
	o := p.Owner()
	return o != "" && o == owner
}

// String describes the principal for logs.
func (p Principal) String() string {
	switch {
	case p.Upload:
		return UploadOwner
	case p.TokenName != "":
		return fmt.Sprintf("%s (API token %d)", p.Owner(), p.TokenID)
	}
	return fmt.Sprintf("%s (token %d)", p.Owner(), p.TokenID)
}

// Options configure New.
type Options struct {
	// SharedSecret authenticates the upload user; "" disables it.
	SharedSecret string
	// EmailDomain (e.g. "@example.com") is the domain OAuth users must
	// belong to, compared case-insensitively as a suffix. A missing
	// leading "@" is added. "" accepts nobody unless AllowAnyEmail.
	EmailDomain string
	// AllowAnyEmail, with no EmailDomain, accepts every verified address
	// the provider vouches for. OAuth with neither is an error in New.
	AllowAnyEmail bool
	// Store keeps the tokens. Required.
	Store *store.Store
	// OAuth configures the login; nil disables it (its handlers answer
	// 501 "oauth_not_configured").
	OAuth *OAuthOptions
	// Now is the clock (default time.Now).
	Now func() time.Time
	// TokenTTL is the life of OAuth access tokens: 0 means DefaultTokenTTL
	// (30 days), a negative value means they never expire.
	TokenTTL time.Duration
	// Logger (default: discard).
	Logger *slog.Logger
}

// Authenticator authenticates requests, mints tokens and runs the OAuth
// login. It is safe for concurrent use.
type Authenticator struct {
	secretSum [sha256.Size]byte
	hasSecret bool
	domain    string
	anyEmail  bool
	store     *store.Store
	now       func() time.Time
	tokenTTL  time.Duration
	log       *slog.Logger
	oauth     *oauthFlow // nil: OAuth disabled
	browser   browserLogins
}

// New makes an Authenticator.
func New(opts Options) (*Authenticator, error) {
	if opts.Store == nil {
		return nil, errors.New("auth: a store is required")
	}
	a := &Authenticator{store: opts.Store, now: opts.Now, tokenTTL: opts.TokenTTL, log: opts.Logger, anyEmail: opts.AllowAnyEmail}
	if opts.SharedSecret != "" {
		a.secretSum, a.hasSecret = sha256.Sum256([]byte(opts.SharedSecret)), true
	}
	if d := strings.ToLower(strings.TrimSpace(opts.EmailDomain)); d != "" {
		if !strings.HasPrefix(d, "@") {
			d = "@" + d
		}
		if d == "@" || strings.Count(d, "@") != 1 {
			return nil, fmt.Errorf("auth: e-mail domain %q is not like \"@example.com\"", opts.EmailDomain)
		}
		a.domain = d
	}
	if a.now == nil {
		a.now = time.Now
	}
	if a.tokenTTL == 0 {
		a.tokenTTL = DefaultTokenTTL
	}
	if a.log == nil {
		a.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if opts.OAuth != nil {
		if a.domain == "" && !a.anyEmail {
			return nil, errors.New("auth: an OAuth login with no trusted e-mail domain would accept any account the provider knows: set one, or AllowAnyEmail")
		}
		if a.domain != "" && a.anyEmail {
			return nil, fmt.Errorf("auth: AllowAnyEmail contradicts the trusted e-mail domain %s", a.domain)
		}
		f, err := newOAuthFlow(*opts.OAuth, a.now)
		if err != nil {
			return nil, err
		}
		a.oauth = f
	}
	return a, nil
}

// NewFromConfig makes an Authenticator from sindrid's configuration:
// shared_secret, trusted_user_email_domain and the [oauth] section (OAuth
// stays disabled unless cfg.OAuthEnabled()).
func NewFromConfig(cfg *config.Config, st *store.Store, log *slog.Logger) (*Authenticator, error) {
	opts := Options{
		SharedSecret:  cfg.SharedSecret,
		EmailDomain:   cfg.TrustedUserEmailDomain,
		AllowAnyEmail: cfg.OAuth.AllowAnyEmail,
		Store:         st,
		Logger:        log,
	}
	if cfg.OAuthEnabled() {
		o := cfg.OAuth
		proxies, err := o.TrustedProxyPrefixes()
		if err != nil {
			return nil, fmt.Errorf("auth: %w", err)
		}
		opts.OAuth = &OAuthOptions{
			ClientID:             o.ClientID,
			ClientSecret:         o.ClientSecret,
			RedirectURL:          o.RedirectURL,
			AuthURL:              o.AuthURL,
			TokenURL:             o.TokenURL,
			UserinfoURL:          o.UserinfoURL,
			Scopes:               o.Scopes,
			MaxPending:           o.MaxPendingLogins,
			MaxPendingPerAddress: o.MaxPendingLoginsPerAddress,
			TrustedProxies:       proxies,
		}
	}
	return New(opts)
}

// OAuthEnabled reports whether the OAuth login is configured.
func (a *Authenticator) OAuthEnabled() bool { return a.oauth != nil }

// Authenticate finds who sent r from its "Authorization: Bearer TOKEN"
// header. Every bad credential is an error wrapping ErrUnauthorized; any
// other error (the store failing) is the server's fault.
func (a *Authenticator) Authenticate(r *http.Request) (Principal, error) {
	values := r.Header.Values("Authorization")
	switch len(values) {
	case 0:
		return Principal{}, fmt.Errorf("%w: no Authorization header", ErrUnauthorized)
	case 1:
	default:
		return Principal{}, fmt.Errorf("%w: several Authorization headers", ErrUnauthorized)
	}
	scheme, token, _ := strings.Cut(strings.TrimSpace(values[0]), " ")
	if !strings.EqualFold(scheme, "Bearer") {
		return Principal{}, fmt.Errorf("%w: the Authorization scheme must be Bearer", ErrUnauthorized)
	}
	return a.AuthenticateToken(r.Context(), strings.TrimSpace(token))
}

// AuthenticateToken is Authenticate for the bare token.
func (a *Authenticator) AuthenticateToken(ctx context.Context, token string) (Principal, error) {
	if token == "" {
		return Principal{}, fmt.Errorf("%w: empty bearer token", ErrUnauthorized)
	}
	if len(token) > maxBearerLength {
		return Principal{}, fmt.Errorf("%w: bearer token too long", ErrUnauthorized)
	}
	// Digests of equal length: the comparison takes the same time
	// whatever the token's length and content.
	sum := sha256.Sum256([]byte(token))
	if a.hasSecret && subtle.ConstantTimeCompare(sum[:], a.secretSum[:]) == 1 {
		return Principal{Upload: true}, nil
	}
	if !strings.HasPrefix(token, TokenPrefix) {
		return Principal{}, fmt.Errorf("%w: unknown token", ErrUnauthorized)
	}
	tok, err := a.store.TokenByHash(ctx, sum[:])
	if errors.Is(err, store.ErrNotFound) {
		return Principal{}, fmt.Errorf("%w: unknown, revoked or expired token", ErrUnauthorized)
	}
	if err != nil {
		return Principal{}, fmt.Errorf("auth: looking up a token: %w", err)
	}
	// The database compared expires_at with its own clock; the
	// authenticator's clock has its say too.
	if tok.ExpiresAt != nil && !a.now().Before(*tok.ExpiresAt) {
		return Principal{}, fmt.Errorf("%w: token %d expired", ErrUnauthorized, tok.ID)
	}
	p := Principal{Email: tok.Email, TokenID: tok.ID, Kind: tok.Kind}
	switch tok.Kind {
	case store.TokenOAuth:
		// The domain is checked again on use, so that narrowing
		// trusted_user_email_domain locks out earlier logins.
		if p.Email == "" || !a.domainAllows(p.Email) {
			return Principal{}, fmt.Errorf("%w: token %d belongs to %q, outside the trusted domain", ErrUnauthorized, tok.ID, p.Email)
		}
	case store.TokenAPI:
		p.TokenName = tok.Name
	default:
		return Principal{}, fmt.Errorf("%w: token %d has unknown kind %q", ErrUnauthorized, tok.ID, tok.Kind)
	}
	return p, nil
}

// domainAllows reports whether email is in the trusted domain; with no
// domain, whether any address is allowed.
func (a *Authenticator) domainAllows(email string) bool {
	if a.domain == "" {
		return a.anyEmail
	}
	return strings.HasSuffix(strings.ToLower(email), a.domain)
}

// HashToken is the digest under which a token is stored.
func HashToken(token string) []byte {
	sum := sha256.Sum256([]byte(token))
	return sum[:]
}

// newTokenSecret makes a fresh token's plaintext.
func newTokenSecret() (string, error) {
	b := make([]byte, tokenBytes)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("auth: random token: %w", err)
	}
	return TokenPrefix + base64.RawURLEncoding.EncodeToString(b), nil
}

// MintToken makes a token of that kind, records only its hash and returns
// its plaintext, which nobody can read back later. An API token needs a
// valid name (ValidateTokenName); an OAuth token needs an e-mail address.
// expiresAt nil: the token never expires. A name taken by an unrevoked API
// token is an error wrapping store.ErrConflict.
func (a *Authenticator) MintToken(ctx context.Context, kind store.TokenKind, name, email string, expiresAt *time.Time) (string, store.Token, error) {
	email = strings.ToLower(strings.TrimSpace(email))
	switch kind {
	case store.TokenAPI:
		if err := ValidateTokenName(name); err != nil {
			return "", store.Token{}, err
		}
	case store.TokenOAuth:
		if email == "" {
			return "", store.Token{}, errors.New("auth: an OAuth token needs an e-mail address")
		}
	default:
		return "", store.Token{}, fmt.Errorf("auth: unknown token kind %q", kind)
	}
	secret, err := newTokenSecret()
	if err != nil {
		return "", store.Token{}, err
	}
	tok, err := a.store.CreateToken(ctx, store.TokenInput{
		Kind: kind, Name: name, Email: email, Hash: HashToken(secret), ExpiresAt: expiresAt,
	})
	if errors.Is(err, store.ErrConflict) && kind == store.TokenAPI {
		return "", store.Token{}, fmt.Errorf("auth: an API token named %q exists already (revoke it first): %w", name, err)
	}
	if err != nil {
		return "", store.Token{}, fmt.Errorf("auth: minting a token: %w", err)
	}
	a.audit(ctx, "create_token", tok.ID, tokenLabel(tok))
	return secret, tok, nil
}

// tokenLabel names a token in the audit log: an API token by its name,
// an OAuth token by its e-mail address.
func tokenLabel(t store.Token) string {
	if t.Kind == store.TokenAPI {
		return "api token " + t.Name
	}
	return "oauth login " + t.Email
}

// audit records a token operation; the actor is sindrid itself, on behalf
// of an OAuth login or of the `sindrid token` command run by root.
func (a *Authenticator) audit(ctx context.Context, action string, id int64, detail string) {
	err := a.store.Audit(ctx, store.AuditEntry{Actor: "sindrid", Action: action, TargetType: "token",
		TargetID: id, Outcome: "ok", Detail: detail})
	if err != nil && a.log != nil {
		a.log.Error("auth: audit", "action", action, "err", err)
	}
}

// mintOAuthToken mints the token an OAuth login hands out, expiring after
// the configured TTL.
func (a *Authenticator) mintOAuthToken(ctx context.Context, email string) (string, store.Token, error) {
	var expires *time.Time
	if a.tokenTTL > 0 {
		t := a.now().Add(a.tokenTTL).UTC().Truncate(time.Microsecond)
		expires = &t
	}
	return a.MintToken(ctx, store.TokenOAuth, "", email, expires)
}

// ValidateTokenName checks an API token name: 1-64 characters of
// [a-z0-9-_.]. The error wraps ErrInvalidTokenName.
func ValidateTokenName(name string) error {
	if name == "" || len(name) > MaxTokenNameLength {
		return fmt.Errorf("%w: %q: a token name has 1 to %d characters", ErrInvalidTokenName, name, MaxTokenNameLength)
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return fmt.Errorf("%w: %q: a token name may only hold lower-case letters, digits, '-', '_' and '.'", ErrInvalidTokenName, name)
		}
	}
	return nil
}

// CreateAPIToken mints a named API token (for CI jobs) that never expires
// and returns its plaintext, shown once.
func (a *Authenticator) CreateAPIToken(ctx context.Context, name string) (string, store.Token, error) {
	return a.MintToken(ctx, store.TokenAPI, name, "", nil)
}

// ListAPITokens lists the unrevoked API tokens, oldest first.
func (a *Authenticator) ListAPITokens(ctx context.Context) ([]store.Token, error) {
	toks, err := a.store.ListTokens(ctx, store.TokenAPI)
	if err != nil {
		return nil, fmt.Errorf("auth: listing API tokens: %w", err)
	}
	return toks, nil
}

// RevokeAPIToken revokes the API token with that name; an error wrapping
// store.ErrNotFound if there is none.
func (a *Authenticator) RevokeAPIToken(ctx context.Context, name string) error {
	if err := ValidateTokenName(name); err != nil {
		return err
	}
	if err := a.store.RevokeAPIToken(ctx, name); err != nil {
		return fmt.Errorf("auth: %w", err)
	}
	a.audit(ctx, "revoke_token", 0, "api token "+name)
	return nil
}

// ListTokens lists every unrevoked token, OAuth logins and API tokens,
// oldest first.
func (a *Authenticator) ListTokens(ctx context.Context) ([]store.Token, error) {
	toks, err := a.store.ListTokens(ctx, "")
	if err != nil {
		return nil, fmt.Errorf("auth: listing tokens: %w", err)
	}
	return toks, nil
}

// RevokeTokensOf revokes every OAuth login of an e-mail address; an error
// wrapping store.ErrNotFound if it has none.
func (a *Authenticator) RevokeTokensOf(ctx context.Context, email string) (int64, error) {
	n, err := a.store.RevokeTokensOf(ctx, strings.ToLower(strings.TrimSpace(email)))
	if err != nil {
		return 0, fmt.Errorf("auth: %w", err)
	}
	a.audit(ctx, "revoke_token", 0, fmt.Sprintf("%d oauth login(s) of %s", n, email))
	return n, nil
}

// RevokeToken revokes any token by id (e.g. an OAuth login's); an error
// wrapping store.ErrNotFound if there is no such unrevoked token.
func (a *Authenticator) RevokeToken(ctx context.Context, id int64) error {
	if err := a.store.RevokeToken(ctx, id); err != nil {
		return fmt.Errorf("auth: %w", err)
	}
	a.audit(ctx, "revoke_token", id, "")
	return nil
}
