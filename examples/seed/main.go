package main

import (
	"fmt"
	"net/http"
	"strconv"

	"github.com/wuyan94zl/chart"
)

// 定义业务处理结构体，实现下面接口
type data struct {
}

// SendMessage ws 发送消息时回调，可以在这里处理消息记录
func (d *data) SendMessage(msg chart.Message) {
	fmt.Println("send message callback ", msg.ChannelId, msg.Content, msg.Type, msg.SendTime, msg.UserId)
}

// LoginServer 登录成功后回调
func (d *data) LoginServer(uid uint64) {
	fmt.Println("login callback ", uid)
	// 业务逻辑查询出用户应该监听 "channel_one", "channel_two" 2个 channel
	// 监听 "channel_one", "channel_two" 频道
	chart.JoinChannelIds(uid, "channel_one", "channel_two")
	// 退出监听 "channel_one" 频道 监听
	chart.UnJoinChannelIds(uid, "channel_one")

	// 外部业务端发送channel消息
	fmt.Println(chart.SendMessageToChannelIds(uid, "test", "channel_one", "channel_two"))
}
func (d *data) LogoutServer(uid uint64) {
	// 退出登陆回调
	fmt.Println("logout ", uid)
}
func (d *data) ErrorLogServer(err error) {
	// 错误消息回调
	fmt.Println("err: ", err)
}

func main() {
	mux := http.NewServeMux()
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		uid, _ := strconv.Atoi(r.FormValue("id"))
		chart.NewServer(w, r, uint64(uid), &data{})
	})
	err := http.ListenAndServe(":8888", mux)
	if err != nil {
		return
	}
}
