package storage

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
)

// streamHead is how many bytes tell a stream's format.
const streamHead = 16

var (
	// btrfs-progs' send-stream.h: the magic, then a little-endian
	// version.
	btrfsMagic = []byte("btrfs-stream\x00")
	// zstd's frame magic, little-endian 0xFD2FB528.
	zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

// zfsMagic is DMU_BACKUP_MAGIC, the drr_magic of a zfs stream's first
// record (DRR_BEGIN, type 0), in the sending host's byte order.
const zfsMagic = 0x2F5bacbac

// StreamFormatOf names the format of a stream that starts with head:
// StreamBtrfs, StreamZFS, StreamTarZstd, or "" for none of them. It needs
// the first 16 bytes, or the whole stream when it is shorter.
func StreamFormatOf(head []byte) string {
	switch {
	case bytes.HasPrefix(head, btrfsMagic):
		return StreamBtrfs
	case bytes.HasPrefix(head, zstdMagic):
		return StreamTarZstd
	case len(head) >= 16:
		// drr_type (uint32), drr_payloadlen (uint32), drr_magic (uint64).
		typeLE, typeBE := binary.LittleEndian.Uint32(head), binary.BigEndian.Uint32(head)
		magicLE, magicBE := binary.LittleEndian.Uint64(head[8:]), binary.BigEndian.Uint64(head[8:])
		if (typeLE == 0 && magicLE == zfsMagic) || (typeBE == 0 && magicBE == zfsMagic) {
			return StreamZFS
		}
	}
	return ""
}

// CheckStream reads the first bytes of r and, when they are of the format
// want, returns a reader of the whole stream, those bytes included. A
// stream of another format, of none, or empty, is ErrStreamFormat saying
// which it is.
func CheckStream(r io.Reader, want string) (io.Reader, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	head, err := br.Peek(streamHead)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("reading the stream: %w", err)
	}
	got := StreamFormatOf(head)
	switch {
	case got == want:
		return br, nil
	case len(head) == 0:
		return nil, fmt.Errorf("%w: the stream is empty, not a %s stream", ErrStreamFormat, want)
	case got == "":
		return nil, fmt.Errorf("%w: the stream starts with bytes of no format sindri knows (%x), not those of a %s stream", ErrStreamFormat, head, want)
	}
	return nil, fmt.Errorf("%w: it is a %s stream, and this driver receives %s streams; images go between drivers of different formats as tar.zst (package storage/portable)",
		ErrStreamFormat, got, want)
}

// CheckReceivedTree walks the tree that a filesystem's receive made at dir
// and refuses, with ErrUnsafeContent, what no data directory holds and
// what would give whoever uses a clone of the image more than its files:
// device nodes, FIFOs and sockets, set-user-ID files and set-group-ID
// files. A filesystem's stream carries them all; the tar.zst stream never
// makes them (its extractor writes directories, regular files and links,
// with permission bits only).
func CheckReceivedTree(ctx context.Context, dir string) error {
	return filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		switch t := d.Type(); {
		case t&fs.ModeDevice != 0:
			return fmt.Errorf("%w: %q is a device node", ErrUnsafeContent, rel)
		case t&(fs.ModeNamedPipe|fs.ModeSocket) != 0:
			return fmt.Errorf("%w: %q is a FIFO or a socket", ErrUnsafeContent, rel)
		case t.IsRegular():
			info, err := d.Info()
			if err != nil {
				return err
			}
			if info.Mode()&(fs.ModeSetuid|fs.ModeSetgid) != 0 {
				return fmt.Errorf("%w: %q is set-user-ID or set-group-ID (%v)", ErrUnsafeContent, rel, info.Mode())
			}
		}
		return nil
	})
}
