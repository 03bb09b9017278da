package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

func TestClassify(t *testing.T) {
	for code, want := range map[string]error{
		"23505": ErrConflict,
		"23503": ErrInUse,
		"23514": ErrInvalid,
		"23502": ErrInvalid,
		"22021": ErrInvalid, // a NUL in text
		// The database out of reach, as during a failover.
		"57P01": ErrUnavailable, // admin_shutdown: a switchover's fast shutdown
		"57P02": ErrUnavailable, // crash_shutdown
		"57P03": ErrUnavailable, // cannot_connect_now: starting
		"25006": ErrUnavailable, // read_only_sql_transaction: a standby
		"08006": ErrUnavailable, // connection_failure
		"53300": ErrUnavailable, // too_many_connections
	} {
		pgErr := &pgconn.PgError{Code: code, Message: "boom"}
		err := classify(fmt.Errorf("query: %w", pgErr))
		if !errors.Is(err, want) {
			t.Errorf("SQLSTATE %s: %v, want %v", code, err, want)
		}
		var got *pgconn.PgError
		if !errors.As(err, &got) || got != pgErr {
			t.Errorf("SQLSTATE %s: the driver's error left the chain: %v", code, err)
		}
	}
	plain := errors.New("plain")
	if got := classify(plain); got != plain {
		t.Errorf("an unclassified error changed: %v", got)
	}
	if got := classify(&pgconn.PgError{Code: "42P01"}); errors.Is(got, ErrInvalid) || errors.Is(got, ErrConflict) || errors.Is(got, ErrUnavailable) {
		t.Errorf("an undefined table classified as %v", got)
	}
	// A connection that ends or is reset while in use.
	for _, lost := range []error{
		io.EOF, io.ErrUnexpectedEOF, pgconn.ErrConnClosed,
		&net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)},
	} {
		if got := classify(fmt.Errorf("receive message: %w", lost)); !errors.Is(got, ErrUnavailable) {
			t.Errorf("%v: classified as %v, want ErrUnavailable", lost, got)
		}
	}
	for _, other := range []error{context.Canceled, context.DeadlineExceeded, errors.New("plain")} {
		if got := classify(other); errors.Is(got, ErrUnavailable) {
			t.Errorf("%v: classified as unavailable", other)
		}
	}
}

// PostgreSQL text cannot hold NUL: a string with one is refused as
// ErrInvalid, not an unclassified error.
func TestNULInTextIsInvalid(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	_, err := s.CreateImage(ctx, ImageInput{Name: "a\x00b", BackedUpAt: time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)})
	wantErr(t, err, ErrInvalid)
	images := must[[]Image](t)(s.ListImages(ctx))
	if len(images) != 0 {
		t.Fatalf("an image was recorded: %+v", images)
	}
}
