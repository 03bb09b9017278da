package engine

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/sindri-db/sindri/pkg/store"
	"github.com/sindri-db/sindri/pkg/store/storetest"
)

func TestHostServiceIsTheUploadUsers(t *testing.T) {
	ctx := context.Background()
	st, _ := storetest.New(t)
	for _, name := range []string{"sindri-b", "sindri-a"} {
		if _, err := st.RecordHeartbeat(ctx, store.Heartbeat{Name: name, PeerURL: "https://" + name + ":8443",
			PublicHostname: name, StorageDriver: "zfs", TotalBytes: 10 << 30, FreeBytes: 5 << 30}, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	hosts := NewHostService(st, time.Minute)
	list, err := hosts.List(ctx, Actor{Owner: UploadOwner, Upload: true})
	if err != nil || len(list) != 2 || list[0].Name != "sindri-a" || list[0].State != store.HostActive || list[1].StorageDriver != "zfs" {
		t.Fatalf("upload user's list: %+v, %v", list, err)
	}
	if _, err := hosts.List(ctx, Actor{Owner: "ada@example.com"}); !errors.Is(err, ErrForbidden) {
		t.Errorf("a user's list: %v, want ErrForbidden", err)
	}
	// Down as the service's timeout says.
	time.Sleep(300 * time.Millisecond)
	list, err = NewHostService(st, 200*time.Millisecond).List(ctx, Actor{Owner: UploadOwner, Upload: true})
	if err != nil || list[0].State != store.HostDown || list[1].State != store.HostDown {
		t.Errorf("hosts silent for 300ms with a 200ms timeout: %+v, %v", list, err)
	}
}
