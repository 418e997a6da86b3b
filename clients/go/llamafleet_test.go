package llamafleet

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	datav1 "github.com/llamafleet/llamafleet/clients/go/gen/llamafleet/data/v1"
	trainingv1 "github.com/llamafleet/llamafleet/clients/go/gen/llamafleet/training/v1"
)

// fakeData checks the bearer token and rejects an empty record with google.rpc details, the
// way the Python services do.
type fakeData struct {
	datav1.UnimplementedDataServiceServer
	sawToken string
}

func (f *fakeData) PreviewExample(ctx context.Context, req *datav1.PreviewExampleRequest) (*datav1.PreviewExampleResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("authorization"); len(v) > 0 {
		f.sawToken = v[0]
	}
	if req.GetRecord() == nil {
		st := status.New(codes.InvalidArgument, "record is empty")
		st, _ = st.WithDetails(
			&errdetails.ErrorInfo{Reason: "EMPTY_RECORD", Domain: "llamafleet.dev"},
			&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
				{Field: "record", Description: "must not be empty"},
			}},
		)
		return nil, st.Err()
	}
	return &datav1.PreviewExampleResponse{}, nil
}

type fakeTraining struct {
	trainingv1.UnimplementedTrainingServiceServer
}

func (fakeTraining) WatchTrainingJob(req *trainingv1.WatchTrainingJobRequest, stream trainingv1.TrainingService_WatchTrainingJobServer) error {
	for seq := req.GetAfterSequence() + 1; seq <= 3; seq++ {
		if err := stream.Send(&trainingv1.WatchTrainingJobResponse{Event: &trainingv1.TrainingEvent{Sequence: seq}}); err != nil {
			return err
		}
	}
	return nil
}

func startFake(t *testing.T, data *fakeData) *Client {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	datav1.RegisterDataServiceServer(srv, data)
	trainingv1.RegisterTrainingServiceServer(srv, fakeTraining{})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := grpc.DialContext(ctx, "bufnet",
		grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) { return lis.Dial() }),
		grpc.WithInsecure(), grpc.WithBlock(),
		grpc.WithPerRPCCredentials(bearer{token: "s3cret"}))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	return &Client{
		Data:     datav1.NewDataServiceClient(conn),
		Training: trainingv1.NewTrainingServiceClient(conn),
		timeout:  2 * time.Second,
	}
}

func TestErrorsCarryReasonAndFieldViolations(t *testing.T) {
	data := &fakeData{}
	c := startFake(t, data)
	_, err := c.PreviewExample(context.Background(), &datav1.PreviewExampleRequest{})
	var lfErr *Error
	if !errors.As(err, &lfErr) {
		t.Fatalf("want *Error, got %T %v", err, err)
	}
	if lfErr.Code != codes.InvalidArgument || lfErr.Reason != "EMPTY_RECORD" {
		t.Fatalf("code/reason: %v %q", lfErr.Code, lfErr.Reason)
	}
	if len(lfErr.Violations) != 1 || lfErr.Violations[0].Field != "record" {
		t.Fatalf("violations: %+v", lfErr.Violations)
	}
	if data.sawToken != "Bearer s3cret" {
		t.Fatalf("token not sent: %q", data.sawToken)
	}
}

func TestWatchResumesAfterSequence(t *testing.T) {
	c := startFake(t, &fakeData{})
	var seen []int64
	err := c.WatchTrainingJob(context.Background(), &trainingv1.WatchTrainingJobRequest{AfterSequence: 1},
		func(ev *trainingv1.TrainingEvent) error { seen = append(seen, ev.GetSequence()); return nil })
	if err != nil {
		t.Fatal(err)
	}
	if len(seen) != 2 || seen[0] != 2 || seen[1] != 3 {
		t.Fatalf("events after 1: %v", seen)
	}
}

func TestUnimplementedIsATypedError(t *testing.T) {
	c := startFake(t, &fakeData{})
	_, err := c.GetTrainingJob(context.Background(), &trainingv1.GetTrainingJobRequest{})
	var lfErr *Error
	if !errors.As(err, &lfErr) || lfErr.Code != codes.Unimplemented {
		t.Fatalf("want Unimplemented *Error, got %v", err)
	}
}
