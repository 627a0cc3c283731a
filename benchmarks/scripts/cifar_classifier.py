"""The 60-minute blitz's image classifier (our own version): a LeNet-shaped conv net on 3x32x32 images, batch 4,
cross-entropy, SGD with momentum, then an accuracy pass under no_grad.  The tutorial runs 2 epochs of 12,500
batches of CIFAR-10; here 250 seeded random batches, N iterations in all (default 2,000; N=... sets it)."""
import os

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)
N = int(os.environ.get("N", "2000"))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


net = Net()
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
batches = [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))) for _ in range(250)]
for epoch in range(2):
    running_loss = 0.0
    for i in range(N // 2):
        inputs, labels = batches[i % len(batches)]
        optimizer.zero_grad()
        loss = criterion(net(inputs), labels)
        loss.backward()
        optimizer.step()
        running_loss += loss.item()
        if i % 500 == 499:
            print(f"[{epoch + 1}, {i + 1:5d}] loss: {running_loss / 500:.3f}")
            running_loss = 0.0
correct = total = 0
with torch.no_grad():
    for images, labels in batches[:50]:
        _, predicted = torch.max(net(images).data, 1)
        total += labels.size(0)
        correct += (predicted == labels).sum().item()
print(f"accuracy on 200 images: {100 * correct // total} %")
