package console

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"net/http"
	"sync"
	"time"

	"github.com/sindri-db/sindri/pkg/api"
)

// Cookies of the console. The session cookie holds only a random id; the
// server keeps, in memory, the token the session acts with (authenticated
// again on every request, so a revoked or expired token ends the session)
// and the session's CSRF token. A restart of sindrid signs everybody out.
const (
	sessionCookie = "sindri_session"
	// signInCookie holds the secret the sign-in form must echo (a
	// double-submit CSRF token: a form on another site cannot read it).
	signInCookie = "sindri_signin"
	csrfField    = "csrf"
)

// DefaultSessionTTL is how long a console session lasts from sign-in.
const DefaultSessionTTL = 12 * time.Hour

// maxSessions bounds the sessions kept; the oldest goes first.
const maxSessions = 10000

type session struct {
	key     string // sha256 of the cookie's id
	token   string // what the session acts with
	tokenID int64  // a token the console's OAuth sign-in minted: revoked at sign-out; 0 otherwise
	csrf    string
	created time.Time
	expires time.Time
	notices []notice
	ops     []*operation
}

// notice is a message shown once on the next page.
type notice struct {
	Text  string
	Error bool
}

// operation is a change running in the background for the session (an
// instance being created), shown on the instances page until it ends.
type operation struct {
	What       string
	Done       bool
	Err        *api.Error
	InstanceID int64
	ended      time.Time
}

// opShownFor is how long the instances page shows how an operation ended.
const opShownFor = 30 * time.Second

type sessions struct {
	mu   sync.Mutex
	byID map[string]*session
	ttl  time.Duration
	now  func() time.Time
}

func newSessions(ttl time.Duration, now func() time.Time) *sessions {
	return &sessions{byID: map[string]*session{}, ttl: ttl, now: now}
}

func keyOf(id string) string {
	sum := sha256.Sum256([]byte(id))
	return string(sum[:])
}

// create makes a session acting with token and returns its cookie's id.
func (s *sessions) create(token string, tokenID int64) (string, *session) {
	id := randomToken()
	now := s.now()
	sess := &session{key: keyOf(id), token: token, tokenID: tokenID, csrf: randomToken(), created: now, expires: now.Add(s.ttl)}
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, old := range s.byID {
		if now.After(old.expires) {
			delete(s.byID, k)
		}
	}
	for len(s.byID) >= maxSessions {
		var oldest *session
		for _, old := range s.byID {
			if oldest == nil || old.created.Before(oldest.created) {
				oldest = old
			}
		}
		delete(s.byID, oldest.key)
	}
	s.byID[sess.key] = sess
	return id, sess
}

// get returns the live session of the request's cookie.
func (s *sessions) get(r *http.Request) *session {
	c, err := r.Cookie(sessionCookie)
	if err != nil || c.Value == "" {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sess := s.byID[keyOf(c.Value)]
	if sess == nil {
		return nil
	}
	if s.now().After(sess.expires) {
		delete(s.byID, sess.key)
		return nil
	}
	return sess
}

func (s *sessions) remove(sess *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.byID, sess.key)
}

// notify adds a notice for the session's next page.
func (s *sessions) notify(sess *session, text string, isError bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sess.notices = append(sess.notices, notice{Text: text, Error: isError})
}

// start records an operation running for the session.
func (s *sessions) start(sess *session, what string) *operation {
	s.mu.Lock()
	defer s.mu.Unlock()
	op := &operation{What: what}
	sess.ops = append(sess.ops, op)
	return op
}

// finish records how op ended.
func (s *sessions) finish(op *operation, instanceID int64, err *api.Error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	op.Done, op.InstanceID, op.Err, op.ended = true, instanceID, err, s.now()
}

// takeNotices returns the session's notices, each shown once.
func (s *sessions) takeNotices(sess *session) []notice {
	s.mu.Lock()
	defer s.mu.Unlock()
	notices := sess.notices
	sess.notices = nil
	return notices
}

// takeOps returns the session's operations to show: the running ones,
// and for opShownFor how those that ended did. running reports whether
// any still runs.
func (s *sessions) takeOps(sess *session) (ops []operation, running bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var keep []*operation
	now := s.now()
	for _, op := range sess.ops {
		if op.Done && now.Sub(op.ended) > opShownFor {
			continue
		}
		ops = append(ops, *op)
		keep = append(keep, op)
		running = running || !op.Done
	}
	sess.ops = keep
	return ops, running
}

// validCSRF reports whether the form's token is the session's.
func validCSRF(want, got string) bool {
	return want != "" && subtle.ConstantTimeCompare([]byte(want), []byte(got)) == 1
}

func randomToken() string {
	b := make([]byte, 32)
	rand.Read(b) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b)
}

// cookie is a console cookie: HttpOnly, Secure over HTTPS, SameSite=Lax,
// for the console's paths only.
func cookie(r *http.Request, name, value string, maxAge int) *http.Cookie {
	return &http.Cookie{
		Name: name, Value: value, Path: "/ui/", MaxAge: maxAge,
		HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteLaxMode,
	}
}
