package client

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"
)

// Token is the answer of POST /access_tokens, shaped like
// golang.org/x/oauth2's Token. Draupnir clients send RefreshToken as their
// bearer token; Expiry is the zero time when the token does not expire.
type Token struct {
	AccessToken  string    `json:"access_token"`
	TokenType    string    `json:"token_type"`
	RefreshToken string    `json:"refresh_token"`
	Expiry       time.Time `json:"expiry"`
}

// AccessToken waits for the browser leg of the OAuth login with state (the
// browser opens /authenticate?state=state) and returns the token the
// server issued. It sends no Authorization header. The server waits up to
// its own timeout (60 s by default); ctx bounds the call on this side.
func (c *Client) AccessToken(ctx context.Context, state string) (*Token, error) {
	body := document("access_tokens", "", map[string]any{"state": state})
	data, err := json.Marshal(body)
	if err != nil {
		return nil, err
	}
	req, err := c.request(ctx, http.MethodPost, "/access_tokens", io.NopCloser(bytes.NewReader(data)))
	if err != nil {
		return nil, err
	}
	req.ContentLength = int64(len(data))
	req.Header.Set("Content-Type", "application/vnd.api+json")
	req.Header.Set("Accept", "application/json, application/vnd.api+json")
	req.Header.Del("Authorization")
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, &ConnectionError{URL: c.base.String(), Err: err}
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, &ConnectionError{URL: c.base.String(), Err: err}
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, errorFrom(resp.StatusCode, raw)
	}
	var tok Token
	if err := json.Unmarshal(raw, &tok); err != nil {
		return nil, fmt.Errorf("POST /access_tokens: the server's answer is not JSON: %w", err)
	}
	if tok.RefreshToken == "" && tok.AccessToken == "" {
		return nil, fmt.Errorf("POST /access_tokens: the server's answer holds no token")
	}
	return &tok, nil
}
