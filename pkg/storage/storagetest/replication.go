package storagetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"testing/iotest"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sindri-db/sindri/pkg/ingest"
	"github.com/sindri-db/sindri/pkg/storage"
	"github.com/sindri-db/sindri/pkg/storage/portable"
)

// The owner of most of a replica fixture's files, as the postgres user
// owns a data directory: any uid but root's.
const pgUID, pgGID = 70, 70

// replicaEntry is one entry of replicaFixture.
type replicaEntry struct {
	path     string
	kind     fs.FileMode // 0 (regular), fs.ModeDir or fs.ModeSymlink
	data     []byte      // a regular file's content
	link     string      // a link's target
	mode     fs.FileMode // permissions
	uid, gid int
	sparse   int64 // a regular file's hole before its data
}

// The random content of replicaFixture, the same in every call.
var (
	replicaControl = randomBytes(8192)
	replicaBig     = randomBytes(3 << 20)
)

// replicaFixture is a data directory with what replication must carry
// whole: nested directories and empty ones, files of several modes and
// owners, an empty file, a sparse one, symbolic links (to a file, to a
// directory, dangling), and sindri's volume record. native adds what only
// the filesystems' own streams carry: a link out of the directory.
func replicaFixture(native bool) []replicaEntry {
	pg := func(e replicaEntry) replicaEntry { e.uid, e.gid = pgUID, pgGID; return e }
	dir := func(p string, mode fs.FileMode) replicaEntry {
		return pg(replicaEntry{path: p, kind: fs.ModeDir, mode: mode})
	}
	file := func(p string, data []byte, mode fs.FileMode) replicaEntry {
		return pg(replicaEntry{path: p, data: data, mode: mode})
	}
	link := func(p, target string) replicaEntry {
		return pg(replicaEntry{path: p, kind: fs.ModeSymlink, link: target})
	}
	entries := []replicaEntry{
		dir("base", 0o700), dir("base/1", 0o700), dir("global", 0o700), dir("pg_wal", 0o700),
		dir("pg_tblspc", 0o700), dir("pg_logical", 0o750), dir("pg_logical/mappings", 0o750),
		file("PG_VERSION", []byte("15\n"), 0o600),
		file("base/1/1259", bytes.Repeat([]byte("relation page "), 600), 0o600),
		file("base/1/empty", nil, 0o600),
		file("global/pg_control", replicaControl, 0o600),
		file("big.dat", replicaBig, 0o640),
		file("sindri_volume.json", []byte(`{"installation":"0b6f9a52-4f4e-4bd5-9d3c-2f1d1d0a7e11","kind":"image","id":3,"created_at":"2026-01-02T03:04:05.123456Z"}`+"\n"), 0o644),
		{path: "run.sh", data: []byte("#!/bin/sh\nexit 0\n"), mode: 0o755}, // root's
		{path: "odd-owner", data: []byte("x"), mode: 0o604, uid: 1234, gid: 5678},
		pg(replicaEntry{path: "pg_wal/sparse", data: []byte("after the hole"), mode: 0o600, sparse: 1 << 20}),
		link("current", "base/1"),
		link("version", "PG_VERSION"),
		link("dangling", "no-such-file"),
	}
	if native {
		entries = append(entries, link("socket-dir", "/var/run/postgresql"))
	}
	return entries
}

// keepsAbsoluteLinks tells whether d's own stream carries a symbolic link
// that leads out of the image, as a filesystem's send does. The tar.zst
// stream does not: its receiver, the upload extractor, refuses such links.
func keepsAbsoluteLinks(d storage.Driver) bool {
	return d.Capabilities().StreamFormat != storage.StreamTarZstd
}

// writeReplicaFixture writes replicaFixture into dir, and gives dir itself
// mode 0700 and the postgres user's ids, as a data directory has.
func writeReplicaFixture(t testing.TB, dir string, native bool) {
	t.Helper()
	for _, e := range replicaFixture(native) {
		p := filepath.Join(dir, e.path)
		var err error
		switch e.kind {
		case fs.ModeDir:
			err = os.Mkdir(p, e.mode)
		case fs.ModeSymlink:
			err = os.Symlink(e.link, p)
		default:
			err = writeSparse(p, e.sparse, e.data, e.mode)
		}
		if err == nil {
			err = os.Lchown(p, e.uid, e.gid)
		}
		if err == nil && e.kind != fs.ModeSymlink {
			err = os.Chmod(p, e.mode) // past the umask
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(dir, pgUID, pgGID); err != nil {
		t.Fatal(err)
	}
}

func writeSparse(path string, hole int64, data []byte, mode fs.FileMode) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	if _, err := f.WriteAt(data, hole); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// makeReplicaImage freezes a volume holding replicaFixture into image.
func makeReplicaImage(t testing.TB, d storage.Driver, image string, native bool) storage.Entry {
	t.Helper()
	v, err := d.Create(ctx, image+"-upload")
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	writeReplicaFixture(t, v.Path, native)
	img, err := d.Freeze(ctx, v.Name, image)
	if err != nil {
		t.Fatalf("Freeze: %v", err)
	}
	return img
}

// copyNode is what a user checks of one entry of a copied tree.
type copyNode struct {
	Type     string // "dir", "file", "link"
	Mode     fs.FileMode
	UID, GID uint32
	Size     int64
	SHA256   string
	Link     string
}

func (n copyNode) String() string {
	s := fmt.Sprintf("%s %v %d:%d", n.Type, n.Mode, n.UID, n.GID)
	switch n.Type {
	case "file":
		s += fmt.Sprintf(" %d bytes sha256 %.12s", n.Size, n.SHA256)
	case "link":
		s += " -> " + n.Link
	}
	return s
}

// contentTree describes every entry under dir, dir itself as ".": its type,
// permissions, numeric owner and group, and a file's size and SHA-256 or
// a link's target.
func contentTree(t testing.TB, dir string) map[string]copyNode {
	t.Helper()
	out := map[string]copyNode{}
	err := filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st, ok := info.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("no stat for %s", p)
		}
		n := copyNode{Mode: info.Mode().Perm(), UID: st.Uid, GID: st.Gid}
		switch {
		case info.IsDir():
			n.Type = "dir"
		case info.Mode()&fs.ModeSymlink != 0:
			n.Type = "link"
			if n.Link, err = os.Readlink(p); err != nil {
				return err
			}
			n.Mode = 0 // a link's own permissions mean nothing on Linux
		case info.Mode().IsRegular():
			n.Type = "file"
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			n.Size = int64(len(data))
			n.SHA256 = fmt.Sprintf("%x", sha256.Sum256(data))
		default:
			n.Type = info.Mode().Type().String()
		}
		rel, _ := filepath.Rel(dir, p)
		out[rel] = n
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// sameTree reports every difference between two trees.
func sameTree(t testing.TB, what string, want, got map[string]copyNode) {
	t.Helper()
	var diffs []string
	for p, w := range want {
		g, ok := got[p]
		switch {
		case !ok:
			diffs = append(diffs, fmt.Sprintf("%s: missing (want %s)", p, w))
		case g != w:
			diffs = append(diffs, fmt.Sprintf("%s: %s, want %s", p, g, w))
		}
	}
	for p, g := range got {
		if _, ok := want[p]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s: not in the original (%s)", p, g))
		}
	}
	sort.Strings(diffs)
	for _, d := range diffs {
		t.Errorf("%s: %s", what, d)
	}
}

// checkFixtureTree checks that a tree is the fixture that was written, so
// that a comparison of two trees cannot pass by both being wrong.
func checkFixtureTree(t testing.TB, got map[string]copyNode, native bool) {
	t.Helper()
	want := map[string]copyNode{".": {Type: "dir", Mode: 0o700, UID: pgUID, GID: pgGID}}
	for _, e := range replicaFixture(native) {
		n := copyNode{Mode: e.mode, UID: uint32(e.uid), GID: uint32(e.gid)}
		switch e.kind {
		case fs.ModeDir:
			n.Type = "dir"
		case fs.ModeSymlink:
			n.Type, n.Link, n.Mode = "link", e.link, 0
		default:
			content := append(make([]byte, e.sparse), e.data...)
			n.Type, n.Size, n.SHA256 = "file", int64(len(content)), fmt.Sprintf("%x", sha256.Sum256(content))
		}
		want[e.path] = n
	}
	sameTree(t, "the image frozen from the fixture", want, got)
}

// replicate sends image from src through a pipe into dst as name, with
// send and receive (the drivers' own, or another pair), and returns what
// the receive returned.
func replicate(t testing.TB, send func(w io.Writer) error, receive func(r io.Reader) (storage.Entry, error)) (storage.Entry, error) {
	t.Helper()
	return pipe(send, receive)
}

// pipe runs send into receive through a pipe. A send that fails while the
// receive succeeds is an error too.
func pipe(send func(w io.Writer) error, receive func(r io.Reader) (storage.Entry, error)) (storage.Entry, error) {
	pr, pw := io.Pipe()
	sent := make(chan error, 1)
	go func() {
		err := send(pw)
		pw.CloseWithError(err)
		sent <- err
	}()
	e, err := receive(pr)
	// A sender whose receiver stopped reading must not wait for ever.
	pr.CloseWithError(errors.New("the receive returned"))
	if serr := <-sent; serr != nil && err == nil {
		return e, fmt.Errorf("the send failed while the receive succeeded: %w", serr)
	}
	return e, err
}

func nativeReplicate(t testing.TB, src storage.Driver, image string, dst storage.Driver, as string) (storage.Entry, error) {
	t.Helper()
	return replicate(t,
		func(w io.Writer) error { return src.Send(ctx, image, w) },
		func(r io.Reader) (storage.Entry, error) { return dst.Receive(ctx, as, r) })
}

func sendBytes(t testing.TB, d storage.Driver, image string) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := d.Send(ctx, image, &buf); err != nil {
		t.Fatalf("Send(%s): %v", image, err)
	}
	return buf.Bytes()
}

// checkImage checks that e is the image name, whose tree is want, that
// Get agrees, that nothing writes into it, and that a clone of it starts
// with its tree and takes writes.
func checkImage(t *testing.T, d storage.Driver, e storage.Entry, name string, want map[string]copyNode) {
	t.Helper()
	if e.Name != name || e.Kind != storage.KindImage || e.Origin != "" || !filepath.IsAbs(e.Path) {
		t.Fatalf("received %+v, want image %q with an absolute path", e, name)
	}
	if got, err := d.Get(ctx, name); err != nil || got != e {
		t.Fatalf("Get(%s) = %+v, %v; want %+v", name, got, err, e)
	}
	sameTree(t, "the received image", want, contentTree(t, e.Path))
	requireReadOnly(t, d, e.Path, "PG_VERSION", "big.dat")
	sameTree(t, "the received image after the attempts to write into it", want, contentTree(t, e.Path))
	clone := name + "-clone"
	c := mustClone(t, d, name, clone)
	sameTree(t, "a clone of the received image", want, contentTree(t, c.Path))
	if err := os.WriteFile(filepath.Join(c.Path, "base/1/1259"), []byte("written in the clone"), 0o600); err != nil {
		t.Errorf("writing into a clone of the received image: %v", err)
	}
	if err := d.Destroy(ctx, name); !errors.Is(err, storage.ErrHasClones) {
		t.Errorf("Destroy of a received image with a clone: %v, want ErrHasClones", err)
	}
	if err := d.Destroy(ctx, clone); err != nil {
		t.Fatalf("Destroy(%s): %v", clone, err)
	}
	sameTree(t, "the received image after its clone was written and destroyed", want, contentTree(t, e.Path))
}

// testSendReceiveRoundTrip sends an image into a second driver on a second
// filesystem: what arrives is an image like any other, with every byte,
// mode, owner and link of the one sent (sindri's volume record among
// them); it is cloned, snapshotted, sent on and destroyed as any image is.
func testSendReceiveRoundTrip(t *testing.T, factory Factory) {
	src, _ := factory(t, smallFS)
	dst, reopenDst := factory(t, smallFS)
	native := keepsAbsoluteLinks(src)
	img := makeReplicaImage(t, src, "image-1", native)
	want := contentTree(t, img.Path)
	checkFixtureTree(t, want, native)
	if t.Failed() {
		t.FailNow()
	}

	// Another name than the sent one, as a receiver may choose.
	got, err := nativeReplicate(t, src, "image-1", dst, "image-7")
	if err != nil {
		t.Fatalf("Receive: %v", err)
	}
	checkImage(t, dst, got, "image-7", want)
	if got, want := names(t, dst), []string{"image:image-7<"}; !slices.Equal(got, want) {
		t.Errorf("after the receive, List = %v, want %v", got, want)
	}
	if got, want := names(t, reopenDst()), []string{"image:image-7<"}; !slices.Equal(got, want) {
		t.Errorf("a new driver over the receiving filesystem lists %v, want %v", got, want)
	}

	// Snapshot behaves on it as on any image.
	pins := dst.Capabilities().SnapshotPinsSource
	mustClone(t, dst, "image-7", "instance-1")
	snap, err := dst.Snapshot(ctx, "image-7", "backup-1")
	if err != nil {
		t.Fatalf("Snapshot of the received image: %v", err)
	}
	sameTree(t, "a snapshot of the received image", want, contentTree(t, snap.Path))
	// An image that Snapshot made (a branch, a backup) is sent as any.
	branch, err := nativeReplicate(t, dst, "backup-1", src, "image-10")
	if err != nil {
		t.Fatalf("sending an image made by Snapshot: %v", err)
	}
	checkImage(t, src, branch, "image-10", want)
	if err := src.Destroy(ctx, "image-10"); err != nil {
		t.Fatal(err)
	}

	// Sent on, back to the first filesystem under a third name.
	back, err := nativeReplicate(t, dst, "image-7", src, "image-9")
	if err != nil {
		t.Fatalf("sending the received image on: %v", err)
	}
	checkImage(t, src, back, "image-9", want)

	if err := dst.Destroy(ctx, "instance-1"); err != nil {
		t.Fatal(err)
	}
	err = dst.Destroy(ctx, "image-7")
	switch {
	case pins && !errors.Is(err, storage.ErrHasClones):
		t.Errorf("Destroy of the received image while its snapshot exists: %v, want ErrHasClones (the driver declares SnapshotPinsSource)", err)
	case !pins && err != nil:
		t.Errorf("Destroy of the received image while its snapshot exists: %v (the driver declares that snapshots pin nothing)", err)
	}
	if err := dst.Destroy(ctx, "backup-1"); err != nil {
		t.Fatal(err)
	}
	if pins {
		if err := dst.Destroy(ctx, "image-7"); err != nil {
			t.Fatalf("Destroy of the received image: %v", err)
		}
	}
	if got := names(t, dst); len(got) != 0 {
		t.Errorf("left after destroying everything received: %v", got)
	}
	sameTree(t, "the sent image", want, contentTree(t, img.Path))
	if got, want := names(t, src), []string{"image:image-1<", "image:image-9<"}; !slices.Equal(got, want) {
		t.Errorf("the sending side lists %v, want %v", got, want)
	}
}

// Headers of each stream format, for a receiver to refuse.
func btrfsStreamHead() []byte {
	return append([]byte("btrfs-stream\x00\x01\x00\x00\x00"), make([]byte, 64)...)
}

func zfsStreamHead() []byte {
	head := make([]byte, 80)
	binary.LittleEndian.PutUint64(head[8:], 0x2F5bacbac)
	return head
}

// testReceiveRefusesOtherFormats gives the driver streams of every other
// format sindri knows, and of none: each is refused with ErrStreamFormat,
// saying what the stream is, and nothing is made.
func testReceiveRefusesOtherFormats(t *testing.T, factory Factory) {
	d, _ := factory(t, smallFS)
	makeReplicaImage(t, d, "image-1", false)
	own := d.Capabilities().StreamFormat
	if own == "" {
		t.Fatal("the driver declares no StreamFormat")
	}
	var tarZst bytes.Buffer
	if err := portable.Send(ctx, d, "image-1", &tarZst); err != nil {
		t.Fatal(err)
	}
	streams := []struct {
		what, format string
		data         []byte
	}{
		{"a btrfs send stream", storage.StreamBtrfs, btrfsStreamHead()},
		{"a zfs send stream", storage.StreamZFS, zfsStreamHead()},
		{"a tar.zst stream", storage.StreamTarZstd, tarZst.Bytes()},
		{"random bytes", "", randomBytes(4096)},
		{"a stream of 5 bytes", "", []byte("btrfs")},
		{"an empty stream", "", nil},
	}
	for _, s := range streams {
		if s.format == own {
			continue
		}
		if got := storage.StreamFormatOf(s.data); got != s.format {
			t.Errorf("StreamFormatOf(%s) = %q, want %q", s.what, got, s.format)
		}
		_, err := d.Receive(ctx, "image-2", bytes.NewReader(s.data))
		if !errors.Is(err, storage.ErrStreamFormat) {
			t.Errorf("Receive of %s by a %s driver: %v, want ErrStreamFormat", s.what, own, err)
			continue
		}
		if s.format != "" && (!strings.Contains(err.Error(), s.format) || !strings.Contains(err.Error(), own)) {
			t.Errorf("Receive of %s: %q does not name both formats (%s, %s)", s.what, err, s.format, own)
		}
	}
	if got, want := names(t, d), []string{"image:image-1<"}; !slices.Equal(got, want) {
		t.Errorf("refused streams changed what exists: List = %v, want %v", got, want)
	}
}

var errBrokenStream = errors.New("connection reset by the test")

// blockingReader yields data, then blocks until unblock is closed.
type blockingReader struct {
	r       io.Reader
	unblock chan struct{}
}

func (b *blockingReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if errors.Is(err, io.EOF) {
		<-b.unblock
		return n, io.ErrClosedPipe
	}
	return n, err
}

// cutShortCases are the ways a stream goes wrong on its way: cut short
// anywhere, a byte changed, the connection failing.
func cutShortCases(data []byte) []struct {
	what string
	r    io.Reader
	want error
} {
	flipped := slices.Clone(data)
	flipped[len(flipped)/2] ^= 0x55
	cases := []struct {
		what string
		r    io.Reader
		want error
	}{
		{"cut after 64 bytes", bytes.NewReader(data[:64]), nil},
		{"cut in the middle", bytes.NewReader(data[:len(data)/2]), nil},
		{"cut before its last byte", bytes.NewReader(data[:len(data)-1]), nil},
		{"a byte changed in the middle", bytes.NewReader(flipped), nil},
		{"a read failing half-way", io.MultiReader(bytes.NewReader(data[:len(data)/2]), iotest.ErrReader(errBrokenStream)), errBrokenStream},
	}
	for _, b := range recordBoundaries(data) {
		cases = append(cases, struct {
			what string
			r    io.Reader
			want error
		}{"cut " + b.what, bytes.NewReader(data[:b.at]), nil})
	}
	return cases
}

// recordBoundaries are places where a stream can be cut between two of
// its records, so that what a reader got looks whole record by record:
// the cuts a tool that only checks each record's checksum would miss.
// For a btrfs send stream, before its end command and between two
// commands in its middle; for a zfs send stream, before its DRR_END
// record (the last 312 bytes).
func recordBoundaries(data []byte) []struct {
	what string
	at   int
} {
	type cut = struct {
		what string
		at   int
	}
	switch storage.StreamFormatOf(data) {
	case storage.StreamBtrfs:
		// The magic and a version (17 bytes), then commands: a length
		// (le32), a command (le16) and a crc32c (le32), then the length's
		// bytes.
		var starts []int
		for off := 17; off+10 <= len(data); {
			starts = append(starts, off)
			off += 10 + int(binary.LittleEndian.Uint32(data[off:]))
		}
		if len(starts) < 3 {
			return nil
		}
		return []cut{
			{"before its end command", starts[len(starts)-1]},
			{"between two commands in its middle", starts[len(starts)/2]},
		}
	case storage.StreamZFS:
		if len(data) > 2*312 {
			return []cut{{"before its DRR_END record", len(data) - 312}}
		}
	}
	return nil
}

// checkCutShort runs receive on every way a stream goes wrong, then on a
// stream that stops half-way until the context is cancelled: each fails,
// and what exists is what existed before. Then the whole stream is
// received under the same name.
func checkCutShort(t *testing.T, d storage.Driver, data []byte, receive func(ctx context.Context, r io.Reader) (storage.Entry, error)) storage.Entry {
	t.Helper()
	before := names(t, d)
	for _, c := range cutShortCases(data) {
		e, err := receive(ctx, c.r)
		switch {
		case err == nil:
			t.Errorf("a stream %s was received: %+v", c.what, e)
		case c.want != nil && !errors.Is(err, c.want):
			t.Errorf("a stream %s: %v, want it to wrap %v", c.what, err, c.want)
		case errors.Is(err, storage.ErrStreamFormat) && len(data) > 64:
			t.Errorf("a stream %s: %v; it starts right, so the format is not the failure", c.what, err)
		default:
			t.Logf("a stream %s: %v", c.what, err)
		}
		if after := names(t, d); !slices.Equal(before, after) {
			t.Fatalf("a stream %s left %v (before: %v)", c.what, after, before)
		}
	}

	cctx, cancel := context.WithCancel(ctx)
	unblock := make(chan struct{})
	defer close(unblock)
	halt := &blockingReader{r: bytes.NewReader(data[:len(data)/2]), unblock: unblock}
	done := make(chan error, 1)
	go func() {
		_, err := receive(cctx, halt)
		done <- err
	}()
	time.Sleep(500 * time.Millisecond) // well into the stream
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("a receive cancelled half-way: %v, want context.Canceled", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("a receive whose stream stopped half-way did not return within 60 s of its context's cancel")
	}
	if after := names(t, d); !slices.Equal(before, after) {
		t.Fatalf("a cancelled receive left %v (before: %v)", after, before)
	}

	e, err := receive(ctx, bytes.NewReader(data))
	if err != nil {
		t.Fatalf("the whole stream, after the failed ones: %v", err)
	}
	return e
}

// testReceiveCutShortLeavesNothing: a stream cut short, corrupted, failing
// or cancelled leaves no image and nothing else that List shows, and the
// name stays free for the whole stream.
func testReceiveCutShortLeavesNothing(t *testing.T, factory Factory) {
	src, _ := factory(t, smallFS)
	dst, reopenDst := factory(t, smallFS)
	img := makeReplicaImage(t, src, "image-1", keepsAbsoluteLinks(src))
	want := contentTree(t, img.Path)
	data := sendBytes(t, src, "image-1")
	if got, own := storage.StreamFormatOf(data), src.Capabilities().StreamFormat; got != own {
		t.Fatalf("Send wrote a stream of format %q, want %q", got, own)
	}
	got := checkCutShort(t, dst, data, func(ctx context.Context, r io.Reader) (storage.Entry, error) {
		return dst.Receive(ctx, "image-2", r)
	})
	checkImage(t, dst, got, "image-2", want)
	if got, want := names(t, reopenDst()), []string{"image:image-2<"}; !slices.Equal(got, want) {
		t.Errorf("a new driver over the receiving filesystem lists %v, want %v", got, want)
	}
}

// testSendReceiveClassifiedErrors: what cannot be sent or received says
// why, as errors.Is tells, and changes nothing.
func testSendReceiveClassifiedErrors(t *testing.T, factory Factory) {
	d, _ := factory(t, smallFS)
	img := makeReplicaImage(t, d, "image-1", false)
	if _, err := d.Create(ctx, "volume-1"); err != nil {
		t.Fatal(err)
	}
	if err := d.Send(ctx, "no-such-image", io.Discard); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Send of a missing image: %v, want ErrNotFound", err)
	}
	if err := d.Send(ctx, "volume-1", io.Discard); !errors.Is(err, storage.ErrWrongKind) {
		t.Errorf("Send of a volume: %v, want ErrWrongKind", err)
	}
	data := sendBytes(t, d, "image-1")
	for _, name := range []string{"image-1", "volume-1"} {
		if _, err := d.Receive(ctx, name, bytes.NewReader(data)); !errors.Is(err, storage.ErrExists) {
			t.Errorf("Receive into the name of %s: %v, want ErrExists", name, err)
		}
	}
	if got, want := names(t, d), []string{"image:image-1<", "volume:volume-1<"}; !slices.Equal(got, want) {
		t.Errorf("refused calls changed what exists: List = %v, want %v", got, want)
	}
	// The same stream is received under a free name, even on the
	// filesystem it came from.
	e, err := d.Receive(ctx, "image-2", bytes.NewReader(data))
	if err != nil {
		t.Fatalf("Receive of an image's stream on its own filesystem: %v", err)
	}
	checkImage(t, d, e, "image-2", contentTree(t, img.Path))
}

// replicaFS is the size of the filesystems of the portable tests.
const replicaFS = smallFS

// RunPortable runs the tests of package storage/portable: an image made
// on the driver from's factory makes, received as tar.zst by the one to's
// makes, whatever their kinds.
func RunPortable(t *testing.T, from, to Factory) {
	tests := []struct {
		name string
		fn   func(*testing.T, Factory, Factory)
	}{
		{"RoundTrip", testPortableRoundTrip},
		{"CutShortLeavesNothing", testPortableCutShort},
		{"OtherFormatsRefused", testPortableRefusesOtherFormats},
		{"TooLargeLeavesNothing", testPortableTooLarge},
		{"LeftByACrashIsReplaced", testPortableLeftByACrash},
		{"IntoAFullFilesystem", testPortableIntoAFullFilesystem},
		{"TwoReceivesOfOneName", testPortableTwoReceivesOfOneName},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, from, to) })
	}
}

func portableReplicate(t testing.TB, src storage.Driver, image string, dst storage.Driver, as string) (storage.Entry, error) {
	t.Helper()
	return replicate(t,
		func(w io.Writer) error { return portable.Send(ctx, src, image, w) },
		func(r io.Reader) (storage.Entry, error) { return portable.Receive(ctx, dst, as, r, noLimits) })
}

var noLimits = ingest.Limits{}

func testPortableRoundTrip(t *testing.T, from, to Factory) {
	src, _ := from(t, replicaFS)
	dst, reopenDst := to(t, replicaFS)
	img := makeReplicaImage(t, src, "image-1", false)
	want := contentTree(t, img.Path)
	checkFixtureTree(t, want, false)
	if t.Failed() {
		t.FailNow()
	}
	got, err := portableReplicate(t, src, "image-1", dst, "image-7")
	if err != nil {
		t.Fatalf("%s to %s as tar.zst: %v", src.Name(), dst.Name(), err)
	}
	checkImage(t, dst, got, "image-7", want)
	if got, want := names(t, reopenDst()), []string{"image:image-7<"}; !slices.Equal(got, want) {
		t.Errorf("after the receive, a new driver lists %v, want %v", got, want)
	}
	// A received image goes on natively, like any other.
	if _, err := nativeReplicate(t, dst, "image-7", dst, "image-8"); err != nil {
		t.Errorf("sending on, natively, an image received as tar.zst: %v", err)
	}
	for _, name := range []string{"image-8", "image-7"} {
		if err := dst.Destroy(ctx, name); err != nil {
			t.Fatalf("Destroy(%s): %v", name, err)
		}
	}
	if got := names(t, dst); len(got) != 0 {
		t.Errorf("left after destroying everything received: %v", got)
	}
}

func testPortableCutShort(t *testing.T, from, to Factory) {
	src, _ := from(t, replicaFS)
	dst, _ := to(t, replicaFS)
	img := makeReplicaImage(t, src, "image-1", false)
	var buf bytes.Buffer
	if err := portable.Send(ctx, src, "image-1", &buf); err != nil {
		t.Fatal(err)
	}
	if got := storage.StreamFormatOf(buf.Bytes()); got != storage.StreamTarZstd {
		t.Fatalf("portable.Send wrote a stream of format %q", got)
	}
	got := checkCutShort(t, dst, buf.Bytes(), func(ctx context.Context, r io.Reader) (storage.Entry, error) {
		return portable.Receive(ctx, dst, "image-2", r, noLimits)
	})
	checkImage(t, dst, got, "image-2", contentTree(t, img.Path))
}

// testPortableRefusesOtherFormats: a native stream of one kind is refused
// by a driver of another kind and by portable.Receive, and tar.zst by a
// driver's own Receive, each with ErrStreamFormat naming both formats
// (where the formats differ: dircopy's own stream is tar.zst).
func testPortableRefusesOtherFormats(t *testing.T, from, to Factory) {
	src, _ := from(t, replicaFS)
	dst, _ := to(t, replicaFS)
	makeReplicaImage(t, src, "image-1", false)
	native := sendBytes(t, src, "image-1")
	var tarZst bytes.Buffer
	if err := portable.Send(ctx, src, "image-1", &tarZst); err != nil {
		t.Fatal(err)
	}
	srcFormat, dstFormat := src.Capabilities().StreamFormat, dst.Capabilities().StreamFormat
	refused := func(what string, err error, formats ...string) {
		t.Helper()
		if !errors.Is(err, storage.ErrStreamFormat) {
			t.Errorf("%s: %v, want ErrStreamFormat", what, err)
			return
		}
		for _, f := range formats {
			if !strings.Contains(err.Error(), f) {
				t.Errorf("%s: %q does not say %s", what, err, f)
			}
		}
		t.Logf("%s: %v", what, err)
	}
	if srcFormat != dstFormat {
		_, err := dst.Receive(ctx, "image-2", bytes.NewReader(native))
		refused(fmt.Sprintf("a %s driver's Receive of a %s stream", dstFormat, srcFormat), err, srcFormat, dstFormat)
	}
	if srcFormat != storage.StreamTarZstd {
		_, err := portable.Receive(ctx, dst, "image-2", bytes.NewReader(native), noLimits)
		refused(fmt.Sprintf("portable.Receive of a %s stream", srcFormat), err, srcFormat, storage.StreamTarZstd)
	}
	if dstFormat != storage.StreamTarZstd {
		_, err := dst.Receive(ctx, "image-2", bytes.NewReader(tarZst.Bytes()))
		refused(fmt.Sprintf("a %s driver's Receive of tar.zst", dstFormat), err, storage.StreamTarZstd, dstFormat)
	}
	if got := names(t, dst); len(got) != 0 {
		t.Errorf("refused streams left %v", got)
	}
}

// testPortableTooLarge: a stream that expands past the limits is refused
// and leaves nothing, as an upload does.
func testPortableTooLarge(t *testing.T, from, to Factory) {
	src, _ := from(t, replicaFS)
	dst, _ := to(t, replicaFS)
	makeReplicaImage(t, src, "image-1", false)
	var buf bytes.Buffer
	if err := portable.Send(ctx, src, "image-1", &buf); err != nil {
		t.Fatal(err)
	}
	_, err := portable.Receive(ctx, dst, "image-2", bytes.NewReader(buf.Bytes()), ingest.Limits{MaxBytes: 1 << 20})
	if !errors.Is(err, ingest.ErrTooLarge) {
		t.Errorf("a 3 MB image received within 1 MB: %v, want ErrTooLarge", err)
	}
	if got := names(t, dst); len(got) != 0 {
		t.Errorf("a refused stream left %v", got)
	}
}

// testPortableLeftByACrash: what a crash in the middle of a tar.zst
// receive leaves, its half-filled volume, is destroyed by the next receive
// of the same image, which makes the image whole, with nothing of the
// half-filled volume in it and nothing else left.
func testPortableLeftByACrash(t *testing.T, from, to Factory) {
	src, _ := from(t, replicaFS)
	dst, _ := to(t, replicaFS)
	img := makeReplicaImage(t, src, "image-1", false)
	var buf bytes.Buffer
	if err := portable.Send(ctx, src, "image-1", &buf); err != nil {
		t.Fatal(err)
	}
	stage, err := dst.Create(ctx, portable.StageVolume("image-2"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ingest.ExtractWith(ctx, bytes.NewReader(buf.Bytes()[:buf.Len()/2]), stage.Path, ingest.Options{Replica: true}); err == nil {
		t.Fatal("half a stream was extracted whole")
	}
	if err := os.WriteFile(filepath.Join(stage.Path, "left-by-the-crash"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	e, err := portable.Receive(ctx, dst, "image-2", bytes.NewReader(buf.Bytes()), noLimits)
	if err != nil {
		t.Fatalf("receiving over what a crash left: %v", err)
	}
	checkImage(t, dst, e, "image-2", contentTree(t, img.Path))
	if got, want := names(t, dst), []string{"image:image-2<"}; !slices.Equal(got, want) {
		t.Errorf("after the receive, List = %v, want %v", got, want)
	}
}

// fill writes zeros into a new volume of d until its filesystem is full,
// and returns a function that destroys the volume and waits until the
// space is free again.
func fill(t testing.TB, d storage.Driver) (free func()) {
	t.Helper()
	c, err := d.Capacity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	v, err := d.Create(ctx, "filler")
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(v.Path, "zeros"))
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 1<<20)
	for written := int64(0); ; written += int64(len(chunk)) {
		_, err := f.Write(chunk)
		if storage.NoSpace(err) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if written > c.TotalBytes {
			t.Fatalf("wrote %d bytes into a filesystem of %d without running out of space", written, c.TotalBytes)
		}
	}
	// What the page cache holds is written, or refused, now.
	if err := f.Sync(); err != nil && !storage.NoSpace(err) {
		t.Fatal(err)
	}
	f.Close()
	return func() {
		t.Helper()
		if err := d.Destroy(ctx, "filler"); err != nil {
			t.Fatal(err)
		}
		waitFreed(t, d, filepath.Dir(v.Path), c.FreeBytes-(64<<20))
	}
}

// checkFullFilesystem receives into a filesystem that fill made full: the
// receive fails with an error that storage.NoSpace tells (as the engine
// maps it to "insufficient storage"), and leaves nothing; once there is
// space again the same stream is received.
func checkFullFilesystem(t *testing.T, d storage.Driver, data []byte, receive func(r io.Reader) (storage.Entry, error)) storage.Entry {
	free := fill(t, d)
	before := names(t, d)
	_, err := receive(bytes.NewReader(data))
	if !storage.NoSpace(err) {
		t.Errorf("a receive into a full filesystem: %v, want an error that storage.NoSpace tells", err)
	} else {
		t.Logf("a receive into a full filesystem: %v", err)
	}
	if after := names(t, d); !slices.Equal(before, after) {
		t.Fatalf("a receive into a full filesystem left %v (before: %v)", after, before)
	}
	free()
	e, err := receive(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("the receive, once there was space again: %v", err)
	}
	return e
}

func testReceiveIntoAFullFilesystem(t *testing.T, factory Factory) {
	src, _ := factory(t, smallFS)
	dst, _ := factory(t, smallFS)
	img := makeReplicaImage(t, src, "image-1", keepsAbsoluteLinks(src))
	data := sendBytes(t, src, "image-1")
	e := checkFullFilesystem(t, dst, data, func(r io.Reader) (storage.Entry, error) {
		return dst.Receive(ctx, "image-2", r)
	})
	checkImage(t, dst, e, "image-2", contentTree(t, img.Path))
}

func testPortableIntoAFullFilesystem(t *testing.T, from, to Factory) {
	src, _ := from(t, replicaFS)
	dst, _ := to(t, replicaFS)
	img := makeReplicaImage(t, src, "image-1", false)
	var buf bytes.Buffer
	if err := portable.Send(ctx, src, "image-1", &buf); err != nil {
		t.Fatal(err)
	}
	e := checkFullFilesystem(t, dst, buf.Bytes(), func(r io.Reader) (storage.Entry, error) {
		return portable.Receive(ctx, dst, "image-2", r, noLimits)
	})
	checkImage(t, dst, e, "image-2", contentTree(t, img.Path))
}

// gatedReader yields half of data, then waits for open to be closed
// before it yields the rest.
type gatedReader struct {
	first, rest io.Reader
	open        chan struct{}
}

func (g *gatedReader) Read(p []byte) (int, error) {
	n, err := g.first.Read(p)
	if errors.Is(err, io.EOF) {
		<-g.open
		return g.rest.Read(p)
	}
	return n, err
}

// testPortableTwoReceivesOfOneName: a second receive of an image while the
// first is half-way does not take the first's stage volume from under it:
// the first makes the image whole and the second is refused with
// ErrExists.
func testPortableTwoReceivesOfOneName(t *testing.T, from, to Factory) {
	src, _ := from(t, replicaFS)
	dst, _ := to(t, replicaFS)
	img := makeReplicaImage(t, src, "image-1", false)
	var buf bytes.Buffer
	if err := portable.Send(ctx, src, "image-1", &buf); err != nil {
		t.Fatal(err)
	}
	data := buf.Bytes()
	gate := &gatedReader{first: bytes.NewReader(data[:len(data)/2]), rest: bytes.NewReader(data[len(data)/2:]), open: make(chan struct{})}
	type result struct {
		e   storage.Entry
		err error
	}
	first, second := make(chan result, 1), make(chan result, 1)
	go func() {
		e, err := portable.Receive(ctx, dst, "image-2", gate, noLimits)
		first <- result{e, err}
	}()
	time.Sleep(500 * time.Millisecond) // the first is half-way
	go func() {
		e, err := portable.Receive(ctx, dst, "image-2", bytes.NewReader(data), noLimits)
		second <- result{e, err}
	}()
	time.Sleep(500 * time.Millisecond) // the second has started
	close(gate.open)
	r1, r2 := <-first, <-second
	if r1.err != nil {
		t.Fatalf("the first receive: %v", r1.err)
	}
	if !errors.Is(r2.err, storage.ErrExists) {
		t.Errorf("the second receive of the same name: %+v, %v; want ErrExists", r2.e, r2.err)
	}
	checkImage(t, dst, r1.e, "image-2", contentTree(t, img.Path))
	if got, want := names(t, dst), []string{"image:image-2<"}; !slices.Equal(got, want) {
		t.Errorf("after both receives, List = %v, want %v", got, want)
	}
}

// testReceiveRefusesUnsafeContent sends images that hold what no data
// directory holds and what would give a clone's user more than files: a
// set-user-ID file, a set-group-ID one, a FIFO, a device node. A
// filesystem's stream carries each, and Receive refuses it with
// ErrUnsafeContent, leaving nothing; the tar.zst stream never carries
// them, and the image arrives without them.
func testReceiveRefusesUnsafeContent(t *testing.T, factory Factory) {
	src, _ := factory(t, smallFS)
	dst, _ := factory(t, smallFS)
	tarZst := src.Capabilities().StreamFormat == storage.StreamTarZstd
	cases := []struct {
		what string
		make func(path string) error
	}{
		{"a set-user-ID file", func(p string) error { return writeWithMode(p, 0o755|fs.ModeSetuid) }},
		{"a set-group-ID file", func(p string) error { return writeWithMode(p, 0o755|fs.ModeSetgid) }},
		{"a FIFO", func(p string) error { return unix.Mkfifo(p, 0o600) }},
		{"a device node", func(p string) error { return unix.Mknod(p, unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))) }},
	}
	for i, c := range cases {
		image := fmt.Sprintf("image-%d", i+1)
		v, err := src.Create(ctx, image+"-upload")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(v.Path, "PG_VERSION"), []byte("15\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := c.make(filepath.Join(v.Path, "unsafe")); err != nil {
			t.Fatalf("making %s: %v", c.what, err)
		}
		if _, err := src.Freeze(ctx, v.Name, image); err != nil {
			t.Fatalf("Freeze of a volume with %s: %v", c.what, err)
		}
		e, err := nativeReplicate(t, src, image, dst, image)
		switch {
		case tarZst && err != nil:
			t.Errorf("a tar.zst receive of an image with %s: %v", c.what, err)
		case tarZst:
			info, err := os.Lstat(filepath.Join(e.Path, "unsafe"))
			if err == nil && (!info.Mode().IsRegular() || info.Mode()&(fs.ModeSetuid|fs.ModeSetgid) != 0) {
				t.Errorf("a tar.zst receive of an image with %s made it: %v", c.what, info.Mode())
			}
			if err := dst.Destroy(ctx, image); err != nil {
				t.Fatal(err)
			}
		case !errors.Is(err, storage.ErrUnsafeContent):
			t.Errorf("Receive of an image with %s: %+v, %v; want ErrUnsafeContent", c.what, e, err)
		default:
			t.Logf("%s: %v", c.what, err)
		}
		if got := names(t, dst); len(got) != 0 {
			t.Fatalf("the receive of an image with %s left %v", c.what, got)
		}
	}
}

func writeWithMode(path string, mode fs.FileMode) error {
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"), 0o700); err != nil {
		return err
	}
	return os.Chmod(path, mode)
}
