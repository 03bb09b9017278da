package store

import (
	"context"
	"time"
)

// TokenKind tells OAuth access tokens from named API tokens.
type TokenKind string

// Token kinds.
const (
	TokenOAuth TokenKind = "oauth"
	TokenAPI   TokenKind = "api"
)

// Token is a bearer token, stored as a hash of its secret.
type Token struct {
	ID         int64      `db:"id"`
	Kind       TokenKind  `db:"kind"`
	Name       string     `db:"name"` // an API token's name
	Email      string     `db:"email"`
	Hash       []byte     `db:"token_hash"`
	CreatedAt  time.Time  `db:"created_at"`
	LastUsedAt *time.Time `db:"last_used_at"`
	ExpiresAt  *time.Time `db:"expires_at"` // nil: never
	RevokedAt  *time.Time `db:"revoked_at"`
}

// TokenInput is what CreateToken records.
type TokenInput struct {
	Kind      TokenKind
	Name      string
	Email     string
	Hash      []byte
	ExpiresAt *time.Time
}

const tokenColumns = `id, kind, coalesce(name, '') as name, coalesce(email, '') as email,
	token_hash, created_at, last_used_at, expires_at, revoked_at`

// CreateToken records a token; ErrConflict if its hash is known or an
// unrevoked API token has its name.
func (s *Store) CreateToken(ctx context.Context, in TokenInput) (Token, error) {
	tok, err := get[Token](ctx, s, `insert into tokens (kind, name, email, token_hash, expires_at)
		values ($1, $2, $3, $4, $5) returning `+tokenColumns,
		in.Kind, nullText(in.Name), nullText(in.Email), in.Hash, utc(in.ExpiresAt))
	return tok, wrap(err, "create %s token %q", in.Kind, in.Name)
}

// TokenByHash finds the unrevoked, unexpired token with that hash and
// records that it was used; ErrNotFound otherwise.
func (s *Store) TokenByHash(ctx context.Context, hash []byte) (Token, error) {
	tok, err := get[Token](ctx, s, `update tokens set last_used_at = now()
		where token_hash = $1 and revoked_at is null and (expires_at is null or expires_at > now())
		returning `+tokenColumns, hash)
	return tok, wrap(err, "token by hash")
}

// ListTokens reads the unrevoked tokens of a kind ("" for every kind),
// oldest first; expired ones included.
func (s *Store) ListTokens(ctx context.Context, kind TokenKind) ([]Token, error) {
	toks, err := list[Token](ctx, s, `select `+tokenColumns+` from tokens
		where revoked_at is null and ($1 = '' or kind = $1) order by id`, kind)
	return toks, wrap(err, "list tokens")
}

// RevokeToken revokes an unrevoked token by id; ErrNotFound if none.
func (s *Store) RevokeToken(ctx context.Context, id int64) error {
	tag, err := s.pool.Exec(ctx, `update tokens set revoked_at = now()
		where id = $1 and revoked_at is null`, id)
	return affected(tag, err, "revoke token %d", id)
}

// RevokeTokensOf revokes every unrevoked OAuth token of an e-mail address
// (a person's logins) and returns how many; ErrNotFound if none.
func (s *Store) RevokeTokensOf(ctx context.Context, email string) (int64, error) {
	tag, err := s.pool.Exec(ctx, `update tokens set revoked_at = now()
		where kind = 'oauth' and email = lower($1) and revoked_at is null`, email)
	if err := affected(tag, err, "revoke the tokens of %q", email); err != nil {
		return 0, err
	}
	return tag.RowsAffected(), nil
}

// RevokeAPIToken revokes the unrevoked API token with that name;
// ErrNotFound if none.
func (s *Store) RevokeAPIToken(ctx context.Context, name string) error {
	tag, err := s.pool.Exec(ctx, `update tokens set revoked_at = now()
		where kind = 'api' and name = $1 and revoked_at is null`, name)
	return affected(tag, err, "revoke API token %q", name)
}
