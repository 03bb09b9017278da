package auth

import (
	"bytes"
	"html/template"
	"net/http"
)

// confirmData fills the confirmation page.
type confirmData struct {
	Email       string // who signed in
	Client      string // the waiting client's address
	Began       string // when it began to wait, UTC
	Ago         string // how long ago
	Code        string // the login code of the state
	Browser     string // this browser's address
	SameAddress bool   // the browser and the client share an address
	State, CSRF string
	Waiter      uint64
}

// confirmTemplate is the page on which the person who signed in decides
// whether the waiting client gets the login. Refuse comes first, so that
// Enter refuses. The form posts to oauth_callback relative to the page,
// which works behind a proxy that serves sindri under a path.
var confirmTemplate = template.Must(template.New("confirm").Parse(`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Confirm your sindri login</title>
<style>
body { font-family: sans-serif; max-width: 42em; margin: 2em auto; padding: 0 1em; line-height: 1.45; }
.warn { border: 2px solid #b00020; padding: 0.5em 1em; }
.code { font-family: monospace; font-size: 1.25em; font-weight: bold; letter-spacing: 0.05em; }
button { font-size: 1em; padding: 0.5em 1em; margin: 0.5em 0.5em 0 0; }
</style>
</head>
<body>
<h1>Confirm your sindri login</h1>
<p>You signed in as <strong>{{.Email}}</strong>. A command is waiting to receive a sindri token for this account:</p>
<ul>
<li>it connected from <strong id="client">{{.Client}}</strong>,</li>
<li>it began the login at <strong id="began">{{.Began}}</strong> ({{.Ago}} ago),</li>
<li>its login code is <span class="code" id="code">{{.Code}}</span>.</li>
</ul>
{{if .SameAddress}}<p>This browser connects from the same address.</p>
{{else}}<p class="warn" id="other-address">This browser connects from <strong>{{.Browser}}</strong>, not from the command's address. That is expected only if you ran the command on another machine, for example over ssh.</p>
{{end}}<p class="warn"><strong>Only confirm if you started this login yourself</strong>: you ran <code>sindri authenticate</code> (or <code>draupnir authenticate</code>) from {{.Client}} at {{.Began}}, and your terminal shows the code <span class="code">{{.Code}}</span> (the draupnir client shows no code: check the address and the time). If you did not, or you are not sure, press Refuse: somebody may have sent you this link to obtain access to sindri in your name.</p>
<form method="post" action="oauth_callback">
<input type="hidden" name="state" value="{{.State}}">
<input type="hidden" name="csrf" value="{{.CSRF}}">
<input type="hidden" name="waiter" value="{{.Waiter}}">
<button type="submit" name="decision" value="refuse">Refuse</button>
<button type="submit" name="decision" value="confirm">Confirm: give that command access as {{.Email}}</button>
</form>
</body>
</html>
`))

// confirmPage answers with the confirmation page. It may not be framed
// (a page that frames it could trick the click), cached or sent on as a
// referrer, and its form posts only to this server.
func confirmPage(w http.ResponseWriter, d confirmData) {
	var buf bytes.Buffer
	if err := confirmTemplate.Execute(&buf, d); err != nil {
		page(w, http.StatusInternalServerError, "The confirmation page could not be made; run the login command again.")
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	w.WriteHeader(http.StatusOK)
	w.Write(buf.Bytes())
}
