package console

import (
	"errors"
	"net/http"
	"strings"

	"github.com/sindri-db/sindri/pkg/api"
	"github.com/sindri-db/sindri/pkg/auth"
	"github.com/sindri-db/sindri/pkg/store"
)

type signInData struct {
	OAuth bool
	CSRF  string
	Next  string
	Error string
}

// signInPage shows the sign-in: the OAuth login, if configured, and the
// form to paste a token.
func (c *Console) signInPage(w http.ResponseWriter, r *http.Request) {
	if c.sessions.get(r) != nil {
		http.Redirect(w, r, safeNext(r.URL.Query().Get("next")), http.StatusSeeOther)
		return
	}
	c.showSignIn(w, r, http.StatusOK, "")
}

func (c *Console) showSignIn(w http.ResponseWriter, r *http.Request, status int, errText string) {
	secret := randomToken()
	http.SetCookie(w, cookie(r, signInCookie, secret, 3600))
	next := r.URL.Query().Get("next")
	if r.Method == http.MethodPost {
		next = r.PostForm.Get("next")
	}
	c.render(w, r, status, "signin.html", nil, signInData{OAuth: c.opts.Auth.OAuthEnabled(), CSRF: secret, Next: safeNext(next), Error: errText})
}

// signInWithToken signs in with a pasted token.
func (c *Console) signInWithToken(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		c.showSignIn(w, r, http.StatusBadRequest, "The form could not be read.")
		return
	}
	// A sign-in form posted from another site would sign this browser in
	// as someone else: it cannot know the cookie's secret.
	secret, err := r.Cookie(signInCookie)
	if !sameOrigin(r) || err != nil || !validCSRF(secret.Value, r.PostForm.Get(csrfField)) {
		c.refuseForgery(w, r, "the sign-in form is not this browser's")
		return
	}
	token := strings.TrimSpace(r.PostForm.Get("token"))
	if token == "" {
		c.showSignIn(w, r, http.StatusBadRequest, "Paste a token: the shared secret, a token from `sindri authenticate`, or a named API token.")
		return
	}
	p, err := c.opts.Auth.AuthenticateToken(r.Context(), token)
	if errors.Is(err, auth.ErrUnauthorized) {
		api.LoggerFrom(r.Context()).Info("console: sign-in with a token refused", "err", err)
		c.showSignIn(w, r, http.StatusUnauthorized, "This token is not valid here (unknown, revoked or expired).")
		return
	}
	if err != nil {
		c.renderError(w, r, nil, err)
		return
	}
	id, _ := c.sessions.create(token, 0)
	api.LoggerFrom(r.Context()).Info("console: signed in with a token", "owner", p.Owner())
	http.SetCookie(w, cookie(r, signInCookie, "", -1))
	http.SetCookie(w, cookie(r, sessionCookie, id, int(c.opts.SessionTTL.Seconds())))
	http.Redirect(w, r, safeNext(r.PostForm.Get("next")), http.StatusSeeOther)
}

// signInWithOAuth begins the OAuth login of this browser.
func (c *Console) signInWithOAuth(w http.ResponseWriter, r *http.Request) {
	if !c.opts.Auth.OAuthEnabled() {
		c.showSignIn(w, r, http.StatusNotFound, "OAuth is not configured on this server: paste a token.")
		return
	}
	c.opts.Auth.StartBrowserLogin(w, r, "/ui/login/oauth")
}

// oauthSignedIn ends the OAuth login of a browser (at /oauth_callback):
// the new token becomes the session's.
func (c *Console) oauthSignedIn(w http.ResponseWriter, r *http.Request, token string, tok store.Token) {
	id, _ := c.sessions.create(token, tok.ID)
	http.SetCookie(w, cookie(r, sessionCookie, id, int(c.opts.SessionTTL.Seconds())))
	http.Redirect(w, r, Prefix, http.StatusSeeOther)
}

// signOut ends the session, and revokes the token its OAuth sign-in
// minted (a pasted token stays valid: it is its holder's).
func (c *Console) signOut(w http.ResponseWriter, r *http.Request, q *request) error {
	c.sessions.remove(q.session)
	if q.session.tokenID != 0 {
		if err := c.opts.Auth.RevokeToken(r.Context(), q.session.tokenID); err != nil {
			api.LoggerFrom(r.Context()).Error("console: revoking a signed-out session's token", "token_id", q.session.tokenID, "err", err)
		}
	}
	http.SetCookie(w, cookie(r, sessionCookie, "", -1))
	http.Redirect(w, r, "/ui/login", http.StatusSeeOther)
	return nil
}

// safeNext is where to go after signing in: a console path, never another
// site.
func safeNext(next string) string {
	if !strings.HasPrefix(next, Prefix) || strings.HasPrefix(next, "//") || strings.ContainsAny(next, "\\\r\n") {
		return Prefix
	}
	return next
}
