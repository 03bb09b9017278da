package config

import (
	"errors"
	"strconv"
	"strings"
)

// Error is one problem with a configuration file. Its message is a single
// line naming the key and saying what to fix, prefixed with the file (and
// line, when known):
//
//	config.toml: postgres.min_port must be below postgres.max_port (got 7000 and 6000)
//	config.toml:12: expected value but found '\n' instead
//
// cmd/sindrid prints it and exits with status 2. When a file has several
// problems, Load and Validate join them with errors.Join (one per line);
// errors.As then finds the first.
type Error struct {
	// File is the path of the configuration file ("" when validating a
	// Config that was not loaded from a file).
	File string
	// Line is the 1-based line of the problem, or 0 when unknown.
	Line int
	// Key is the dotted key concerned, e.g. "postgres.min_port", or ""
	// (syntax errors, unreadable file).
	Key string
	// Msg says what is wrong and how to fix it, on one line, without the
	// file prefix.
	Msg string
	// Err is the underlying error, if any (e.g. from os.ReadFile or the
	// TOML decoder).
	Err error
}

func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		if e.Line > 0 {
			b.WriteByte(':')
			b.WriteString(strconv.Itoa(e.Line))
		}
		b.WriteString(": ")
	} else if e.Line > 0 {
		b.WriteString("line ")
		b.WriteString(strconv.Itoa(e.Line))
		b.WriteString(": ")
	}
	b.WriteString(oneLine(e.Msg))
	return b.String()
}

// Unwrap returns the underlying error, if any.
func (e *Error) Unwrap() error { return e.Err }

// oneLine replaces line breaks so that a message stays on one line.
func oneLine(s string) string {
	if !strings.ContainsAny(s, "\r\n") {
		return s
	}
	return strings.Join(strings.Fields(strings.NewReplacer("\r\n", " ", "\n", " ", "\r", " ").Replace(s)), " ")
}

// joinErrors returns nil, the only error, or errors.Join of all of them.
func joinErrors(errs []error) error {
	switch len(errs) {
	case 0:
		return nil
	case 1:
		return errs[0]
	}
	return errors.Join(errs...)
}

// unjoin undoes joinErrors.
func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}
