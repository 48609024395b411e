import Shared
ToolMain.run(Embed.self)
